"""The namespace alone (fs/namespace.py): inode table, names, moves, lookup counts and
forget, listing snapshots. No store, no FUSE."""

from __future__ import annotations

import errno

import pytest

from chute.fs.namespace import MAX_KEY_BYTES, NAME_MAX, ROOT_INODE, Namespace, Node
from chute.fs.refused import Refused
from chute.uploader import leftovers

TTL = 1.0


def namespace(prefix: str = "") -> Namespace:
    return Namespace(lambda path: prefix + path, TTL)


def add(ns: Namespace, parent: Node, name: str, is_dir: bool = False, **attrs: object
        ) -> Node:
    """A name the kernel looked up once."""
    return ns.looked_up(ns.record(parent, name, is_dir, **attrs))


def refused(call, *args: object, **kwargs: object) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as caught:
        call(*args, **kwargs)
    return caught.value.errno


def test_paths_keys_and_inodes() -> None:
    ns = namespace("pre/")
    d = add(ns, ns.root, "d", True)
    f = add(ns, d, "f.txt")
    assert ns.path(f) == "d/f.txt" and ns.key(f) == "pre/d/f.txt" and ns.key(d) == "pre/d/"
    assert ns.node(f.inode) is f and ns.child(d, "f.txt") is f
    assert f.inode > d.inode > ROOT_INODE
    assert refused(ns.node, 999) == errno.ENOENT


def test_name_rules() -> None:
    ns = namespace()
    root = ns.root
    assert ns.check_name(root, "é.txt".encode()) == "é.txt"
    assert ns.check_name(root, b"x" * NAME_MAX) == "x" * NAME_MAX
    assert refused(ns.check_name, root, b"x" * (NAME_MAX + 1)) == errno.ENAMETOOLONG
    assert refused(ns.check_name, root, b"\xff\xfe") == errno.EINVAL
    assert refused(ns.check_name, root, leftovers.MARKER_DIR.encode()) == errno.EPERM
    d = add(ns, root, "d", True)
    assert ns.check_name(d, leftovers.MARKER_DIR.encode())  # reserved only at the root
    # A key of exactly MAX_KEY_BYTES is fine for a file, one byte too many for a dir marker.
    deep = root
    while len(ns.key(deep).encode()) + 1 + NAME_MAX < MAX_KEY_BYTES:
        deep = add(ns, deep, "y" * 200, True)
    name = "z" * (MAX_KEY_BYTES - len(ns.key(deep).encode()))
    assert ns.check_name(deep, name.encode()) == name
    assert refused(ns.check_name, deep, name.encode(), directory=True) == errno.ENAMETOOLONG


def test_forget_with_counts_drops_a_node_only_at_zero() -> None:
    ns = namespace()
    f = add(ns, ns.root, "f")
    ns.looked_up(f)
    inode = f.inode
    ns.forget(inode, 1)
    assert ns.get(inode) is f
    ns.forget(inode, 1)
    assert ns.get(inode) is None and ns.child(ns.root, "f") is None
    assert len(ns) == 1
    ns.forget(inode, 1)  # an unknown inode is ignored
    ns.forget(ROOT_INODE, 5)
    assert ns.get(ROOT_INODE) is ns.root


def test_a_node_in_use_outlives_its_lookups() -> None:
    ns = namespace()
    f = add(ns, ns.root, "f")
    f.opens = 1
    ns.forget(f.inode, 1)
    assert ns.child(ns.root, "f") is f
    f.opens = 0
    ns.release(f)
    assert ns.child(ns.root, "f") is None


def test_a_directory_stays_while_children_hang_under_it() -> None:
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    f = add(ns, d, "f")
    ns.forget(d.inode, 1)
    assert ns.get(d.inode) is d
    ns.forget(f.inode, 1)
    assert len(ns) == 1  # the child left, then the directory it kept


def test_forgotten_names_stay_in_a_fresh_listing() -> None:
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    ns.created_empty(d, 10.0, 10.0)
    f = add(ns, d, "new", size=3)
    first = f.inode
    ns.forget(first, 1)
    assert ns.child(d, "new") is None
    record = ns.from_listing(d, "new")
    assert record is not None and record.size == 3 and record.inode == 0
    again = ns.looked_up(record)
    assert again.inode not in (0, first) and ns.child(d, "new") is again
    assert ns.get(first) is None  # inode numbers are never reused
    assert ns.from_listing(d, "new") is None  # attached, not in the snapshot


def test_removed_names_leave_the_listing() -> None:
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    ns.listed(d, {"a": ns.record(d, "a", False), "b": ns.record(d, "b", False)}, 5.0, 5.0)
    assert ns.from_listing(d, "a") is False  # a file, by name only
    a = ns.looked_up(ns.record(d, "a", False))
    ns.remove(d, "a")
    ns.remove(d, "b")
    assert a.gone and ns.get(a.inode or -1) is None
    assert ns.from_listing(d, "a") is None and ns.from_listing(d, "b") is None
    assert ns.listing_fresh(d, 5.5) and not ns.listing_fresh(d, 6.0)


def test_removed_while_in_use_stays_until_unused() -> None:
    ns = namespace()
    f = add(ns, ns.root, "f")
    f.upload = object()
    ns.remove(ns.root, "f")
    assert ns.get(f.inode) is f and ns.child(ns.root, "f") is None
    ns.forget(f.inode, 1)
    assert ns.get(f.inode) is f
    f.upload = None
    ns.release(f)
    assert len(ns) == 1


def test_stale_snapshots_are_dropped_oldest_first() -> None:
    ns = namespace()
    dirs = [add(ns, ns.root, f"d{i}", True) for i in range(3)]
    ns.listed(dirs[0], {"x": ns.record(dirs[0], "x", False), "y": ns.record(dirs[0], "y", True)},
              0.0, 0.0)
    assert dirs[0].listing == {"x": False, "y": True}
    ns.listed(dirs[1], {}, 0.5, 0.5)
    ns.listed(dirs[2], {}, 1.2, 1.2)  # d0's snapshot (from 0.0) is stale now
    assert dirs[0].listing is None and dirs[1].listing is not None


def test_move_renames_and_replaces() -> None:
    ns = namespace()
    a = add(ns, ns.root, "a", True)
    b = add(ns, ns.root, "b", True)
    f = add(ns, a, "f")
    old = add(ns, b, "g")
    ns.move(f, b, "g", 3.0)
    assert ns.child(b, "g") is f and ns.child(a, "f") is None and ns.path(f) == "b/g"
    assert old.gone and ns.get(old.inode or -1) is None
    assert f.checked_at == 3.0


def test_move_of_a_detached_record_lands_in_the_fresh_listing() -> None:
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    ns.listed(d, {}, 0.0, 0.0)
    src = add(ns, d, "src", size=7)
    ns.forget(src.inode, 1)
    record = ns.from_listing(d, "src")
    assert isinstance(record, Node)  # a forgotten node's full record
    ns.move(record, d, "dst", 0.5)
    assert ns.from_listing(d, "src") is None
    moved = ns.from_listing(d, "dst")
    assert moved is record and moved.size == 7


def test_attach_returns_the_node_already_holding_the_name() -> None:
    ns = namespace()
    f = add(ns, ns.root, "f")
    other = ns.record(ns.root, "f", False)
    assert other is f  # record updates the attached node of the same kind
    as_dir = Node(0, ROOT_INODE, "f", True)
    d = ns.attach(as_dir)
    assert d is as_dir and ns.child(ns.root, "f") is d and f.gone


def test_one_rule_for_what_can_be_a_name() -> None:
    """name_problem: the same rule for listed names and new ones (issue 13)."""
    ns = namespace()
    for bad in ("", ".", "..", "a/b", "ctl\x01", "nl\n", "del\x7f", "esc\x1b[31m", "x" * 256):
        assert ns.name_problem(bad) is not None, bad
    for good in ("a", "é" * 100, "sp ace", "a.b", "...", "x" * 255):
        assert ns.name_problem(good) is None, good
    assert ns.name_problem("a\\b") is not None  # until the probe says the store keeps it
    ns.keeps_backslash = True
    assert ns.name_problem("a\\b") is None


def test_new_names_are_refused_others_are_absent() -> None:
    """A name that breaks the rule is EINVAL when created (create, mkdir, rename target)
    and an ordinary ENOENT otherwise (lookup, unlink, rmdir): listings skip it too."""
    ns = namespace()
    assert refused(ns.check_name, ns.root, b"a\x01", new=True) == errno.EINVAL
    assert refused(ns.check_name, ns.root, b"a\x01") == errno.ENOENT
    assert refused(ns.check_name, ns.root, b"a\\b", new=True) == errno.EINVAL
    ns.keeps_backslash = True
    assert ns.check_name(ns.root, b"a\\b", new=True) == "a\\b"


def test_one_key_length_rule_counts_a_marker_slash() -> None:
    ns = namespace("p" * (MAX_KEY_BYTES - 10))
    ns.check_key_fits(ns.root, "x" * 10, directory=False)
    assert refused(ns.check_key_fits, ns.root, "x" * 10, directory=True) == errno.ENAMETOOLONG
    assert refused(ns.check_name, ns.root, b"x" * 10, directory=True) == errno.ENAMETOOLONG


# -- a listing in flight while the mount changes the directory (fs/snapshots.py) ----------


def listed_names(ns: Namespace, d: Node, **names: bool) -> dict[str, Node]:
    """What a listing of ``d`` answered: ``name=is_dir`` for each name."""
    return {name: ns.record(d, name, is_dir) for name, is_dir in names.items()}


def test_a_removal_during_a_listing_is_not_undone() -> None:
    """rm f while the listing is in flight: the LIST may have been served before the DELETE;
    installed as it came it would claim f exists for up to a TTL."""
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    with ns.listing_in_flight(d) as flight:
        answer = listed_names(ns, d, f=False, g=False)  # served before the delete
        f = add(ns, d, "f")  # the kernel's lookup before unlink
        ns.remove(d, "f")  # the unlink landed
        assert ns.listed(d, answer, 1.0, 1.1, flight)
    assert f.gone and ns.from_listing(d, "f") is None and ns.from_listing(d, "g") is False


def test_a_prune_during_a_listing_keeps_the_name() -> None:
    """A file written and forgotten while the listing is in flight: the LIST may have been
    served before its PutObject; the name still exists after the install."""
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    f = add(ns, d, "new", size=5)
    with ns.listing_in_flight(d) as flight:
        answer = listed_names(ns, d)  # served before the file landed
        ns.forget(f.inode, 1)  # pruned: no snapshot held, but the listing is in flight
        assert ns.listed(d, answer, 1.0, 1.1, flight)
    record = ns.from_listing(d, "new")
    assert isinstance(record, Node) and record.size == 5 and record.inode == 0


def test_a_move_during_a_listing_lands_in_both_directories() -> None:
    ns = namespace()
    a = add(ns, ns.root, "a", True)
    b = add(ns, ns.root, "b", True)
    ns.listed(b, {}, 0.0, 0.0)
    src = add(ns, b, "src")
    ns.forget(src.inode, 1)
    record = ns.from_listing(b, "src")
    assert isinstance(record, Node)
    with ns.listing_in_flight(a) as in_a, ns.listing_in_flight(b) as in_b:
        answer_a = listed_names(ns, a, old=False)
        answer_b = listed_names(ns, b, src=False)  # both served before the renames
        f = ns.looked_up(ns.record(a, "old", False))
        ns.move(f, a, "new", 0.5)  # attached: a rename within a
        ns.forget(f.inode, 1)  # then forgotten: its record goes in under the new name
        ns.move(record, b, "dst", 0.5)  # a detached record renamed within b
        assert ns.listed(a, answer_a, 0.2, 0.6, in_a)
        assert ns.listed(b, answer_b, 0.2, 0.6, in_b)
    assert ns.from_listing(a, "old") is None and ns.from_listing(a, "new") is f
    assert ns.from_listing(b, "src") is None and ns.from_listing(b, "dst") is record


def test_unsure_during_a_listing_installs_nothing() -> None:
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    ns.created_empty(d, 0.0, 0.0)
    with ns.listing_in_flight(d) as flight:
        answer = listed_names(ns, d, f=False)
        ns.unsure_of(d)
        assert not ns.listed(d, answer, 0.5, 0.6, flight)
    assert d.listing is None and not ns.listing_fresh(d, 0.7)
    with ns.listing_in_flight(d) as flight:  # the next listing installs again
        assert ns.listed(d, listed_names(ns, d, f=False), 0.8, 0.9, flight)
    assert ns.from_listing(d, "f") is False


def test_a_directory_leaving_the_table_voids_its_listing() -> None:
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    with ns.listing_in_flight(d) as flight:
        answer = listed_names(ns, d, f=False)
        ns.forget(d.inode, 1)
        assert d.inode == 0 and not ns.listed(d, answer, 0.0, 0.1, flight)
    assert d.listing is None


def test_a_lookup_that_found_nothing_does_not_hide_a_listed_name() -> None:
    """A lookup answered 'absent' from the old snapshot changes nothing: a name created by
    someone else meanwhile shows up with the listing in flight (else a program polling for
    that name would hide it from every listing)."""
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    ns.listed(d, {}, 0.0, 0.0)
    with ns.listing_in_flight(d) as flight:
        answer = listed_names(ns, d, late=False)  # created by another client
        ns.remove(d, "late")  # a lookup of it found it absent in the old snapshot
        assert ns.listed(d, answer, 0.6, 0.7, flight)
    assert ns.from_listing(d, "late") is False


def test_an_older_listing_does_not_replace_a_newer_snapshot() -> None:
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    with ns.listing_in_flight(d) as slow:
        ns.listed(d, listed_names(ns, d, a=False), 2.0, 2.1)  # a later listing landed first
        assert not ns.listed(d, listed_names(ns, d, b=False), 1.0, 2.2, slow)
    assert d.listed_at == 2.0 and ns.from_listing(d, "a") is False
    assert ns.from_listing(d, "b") is None


def test_attached_names_stay_out_of_an_installed_snapshot() -> None:
    ns = namespace()
    d = add(ns, ns.root, "d", True)
    with ns.listing_in_flight(d) as flight:
        answer = listed_names(ns, d, x=False)
        x = add(ns, d, "x", True)  # attached meanwhile, of the other kind (mkdir)
        assert ns.listed(d, answer, 0.0, 0.1, flight)
    assert ns.child(d, "x") is x and ns.from_listing(d, "x") is None
