#!/usr/bin/env python3
"""POSIX probes for tests/posix_native.rs: run as root with one argument, an
empty directory, and print one line per probe, `name: result`. The test runs
this on an ext4 loop mount and on a native fsd volume and compares the two
outputs line by line, so every expected result is ext4's, not written down
here. Results hold no inode numbers or absolute times, only what must agree:
owners, modes, errno names, and whether a time changed.

Each probe runs in a forked child that takes the credentials it names
(uid, gid, supplementary groups, or only the fsuid/fsgid) and reports back
through a pipe.
"""
import ctypes
import errno
import os
import socket
import stat
import sys
import time

BASE = sys.argv[1]
# The classes to run (all when none is named).
WANT = sys.argv[2:]
NOBODY = 65534
NOGROUP = 65534
# A group nobody is not in, and a second one it is given as supplementary.
OTHER = 1  # daemon
SUPP = 2  # bin
NAP = 0.02

libc = ctypes.CDLL(None, use_errno=True)
out = []


def p(*a):
    return os.path.join(BASE, *a)


def code(f, *a):
    try:
        f(*a)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def as_user(uid, gid, groups, f, fsonly=False):
    """Runs f() in a child with the given credentials; returns its string."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            if fsonly:
                # Only the filesystem ids: the real and effective stay root.
                libc.setfsgid(gid)
                libc.setfsuid(uid)
            else:
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            os.umask(0)
            res = str(f())
        except Exception as e:  # report, never hang the parent
            res = "exception " + type(e).__name__ + " " + str(e)
        os.write(w, res.encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        data += b
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


def _renameat2(a, b, flags):
    libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    r = libc.renameat2(-100, a.encode(), -100, b.encode(), flags)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))



def own(path):
    st = os.lstat(path)
    return "%d:%d %o" % (st.st_uid, st.st_gid, st.st_mode)


def times(path):
    st = os.lstat(path)
    return (st.st_ctime_ns, st.st_mtime_ns)


def record(name, value):
    out.append("%s: %s" % (name, value))


def make_all(d, suffix, mode):
    """Creates one of each kind in d; returns their names."""
    names = []
    os.open(os.path.join(d, "f" + suffix), os.O_CREAT | os.O_WRONLY, mode)
    names.append("f" + suffix)
    os.mkdir(os.path.join(d, "d" + suffix), mode)
    names.append("d" + suffix)
    os.mkfifo(os.path.join(d, "p" + suffix), mode)
    names.append("p" + suffix)
    os.mknod(os.path.join(d, "s" + suffix), stat.S_IFSOCK | mode)
    names.append("s" + suffix)
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(d, "b" + suffix))
    s.close()
    names.append("b" + suffix)
    os.symlink("target", os.path.join(d, "l" + suffix))
    names.append("l" + suffix)
    return names


os.umask(0)


# 1. Ownership of new files, directories, FIFOs, nodes and symlinks.
def class_own():
    os.mkdir(p("own"), 0o777)
    os.chmod(p("own"), 0o777)
    os.mkdir(p("sgid"), 0o777)
    os.chown(p("sgid"), 0, OTHER)
    os.chmod(p("sgid"), 0o2777)


    def owners(d, suffix, mode):
        names = make_all(d, suffix, mode)
        return " ".join(n + "=" + own(os.path.join(d, n)) for n in names)


    record("own.nobody", as_user(NOBODY, NOGROUP, [], lambda: owners(p("own"), "n", 0o2755)))
    record(
        "own.nobody_supp",
        as_user(NOBODY, NOGROUP, [SUPP], lambda: owners(p("own"), "g", 0o2755)),
    )
    record(
        "own.fsuid",
        as_user(NOBODY, SUPP, [], lambda: owners(p("own"), "fs", 0o755), fsonly=True),
    )
    record("own.root", owners(p("own"), "r", 0o2755))
    record(
        "sgid.nonmember",
        as_user(NOBODY, NOGROUP, [], lambda: owners(p("sgid"), "n", 0o2755)),
    )
    record(
        "sgid.member",
        as_user(NOBODY, NOGROUP, [OTHER], lambda: owners(p("sgid"), "m", 0o2755)),
    )
    record("sgid.root", owners(p("sgid"), "r", 0o2755))

    # The umask: applied by the kernel before fsd sees the mode (fsd does
    # not ask for FUSE_DONT_MASK), also in a setgid directory.
    def masked():
        os.umask(0o027)
        return owners(p("sgid"), "u", 0o7777)

    record("sgid.umask", as_user(NOBODY, NOGROUP, [OTHER], masked))
    # A directory made in a setgid directory passes the group on again.
    record(
        "sgid.nested",
        as_user(
            NOBODY,
            NOGROUP,
            [],
            lambda: owners(os.path.join(p("sgid"), "dn"), "x", 0o755),
        ),
    )


# 2. chmod of setgid by the owner, member or not of the file's group.
def class_chmod():
    os.mkdir(p("chmod"), 0o777)
    for n in ("f", "d", "fm", "dm", "fown"):
        path = p("chmod", n)
        if n.startswith("d"):
            os.mkdir(path, 0o755)
        else:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        os.chown(path, NOBODY, OTHER)


    def chmods(names, mode):
        res = []
        for n in names:
            c = code(os.chmod, p("chmod", n), mode)
            res.append(n + "=" + c + "," + own(p("chmod", n)))
        return " ".join(res)


    record("chmod.nonmember", as_user(NOBODY, NOGROUP, [], lambda: chmods(["f", "d"], 0o2755)))
    record("chmod.member", as_user(NOBODY, NOGROUP, [OTHER], lambda: chmods(["fm", "dm"], 0o2755)))
    # Own primary group: keeps the bit.
    os.chown(p("chmod", "fown"), NOBODY, NOGROUP)
    record("chmod.primary", as_user(NOBODY, NOGROUP, [], lambda: chmods(["fown"], 0o2711)))
    # fchmod through a descriptor too.
    os.close(os.open(p("chmod", "ff"), os.O_CREAT | os.O_WRONLY, 0o644))
    os.chown(p("chmod", "ff"), NOBODY, OTHER)


    def fchmod_it():
        fd = os.open(p("chmod", "ff"), os.O_RDONLY)
        c = code(os.fchmod, fd, 0o2770)
        os.close(fd)
        return c + "," + own(p("chmod", "ff"))


    record("chmod.fchmod_nonmember", as_user(NOBODY, NOGROUP, [], fchmod_it))
    # chown to a group one is not in clears setgid and setuid (by root: kept? ext4 decides).
    os.close(os.open(p("chmod", "su"), os.O_CREAT | os.O_WRONLY, 0o6755))
    os.chmod(p("chmod", "su"), 0o6755)
    os.chown(p("chmod", "su"), NOBODY, NOGROUP)
    record("chmod.chown_by_root", own(p("chmod", "su")))


# 3. A failed rename, unlink or rmdir changes no ctime or mtime.
def class_fail():
    os.mkdir(p("fail"), 0o777)
    os.mkdir(p("fail", "a"), 0o777)
    os.mkdir(p("fail", "b"), 0o777)
    os.mkdir(p("fail", "a", "full"), 0o777)
    os.close(os.open(p("fail", "a", "full", "x"), os.O_CREAT | os.O_WRONLY, 0o644))
    os.mkdir(p("fail", "b", "full2"), 0o777)
    os.close(os.open(p("fail", "b", "full2", "y"), os.O_CREAT | os.O_WRONLY, 0o644))
    os.close(os.open(p("fail", "a", "file"), os.O_CREAT | os.O_WRONLY, 0o644))
    os.mkdir(p("fail", "a", "emptyd"), 0o777)
    os.mkfifo(p("fail", "a", "fifo"), 0o644)
    os.mknod(p("fail", "a", "sock"), stat.S_IFSOCK | 0o644)
    os.mknod(p("fail", "a", "chr"), stat.S_IFCHR | 0o644, os.makedev(1, 3))
    os.mkdir(p("fail", "sticky"), 0o777)
    os.chmod(p("fail", "sticky"), 0o1777)
    os.close(os.open(p("fail", "sticky", "roots"), os.O_CREAT | os.O_WRONLY, 0o644))
    os.mkdir(p("fail", "sticky", "rootd"), 0o755)
    os.mkdir(p("fail", "ro"), 0o755)
    os.close(os.open(p("fail", "ro", "f"), os.O_CREAT | os.O_WRONLY, 0o644))

    WATCH = [
        ("fail", "a"),
        ("fail", "b"),
        ("fail", "a", "full"),
        ("fail", "b", "full2"),
        ("fail", "a", "file"),
        ("fail", "a", "emptyd"),
        ("fail", "a", "fifo"),
        ("fail", "a", "sock"),
        ("fail", "a", "chr"),
        ("fail", "sticky"),
        ("fail", "sticky", "roots"),
        ("fail", "sticky", "rootd"),
        ("fail", "ro"),
        ("fail", "ro", "f"),
    ]


    def failing(name, f, *a, user=None):
        before = {w: times(p(*w)) for w in WATCH}
        time.sleep(NAP)
        if user:
            c = as_user(NOBODY, NOGROUP, [], lambda: code(f, *a))
        else:
            c = code(f, *a)
        changed = [("/".join(w[1:])) for w in WATCH if times(p(*w)) != before[w]]
        record("fail." + name, c + " changed=" + (",".join(changed) or "none"))


    failing("rename_dir_onto_nonempty", os.rename, p("fail", "a", "emptyd"), p("fail", "b", "full2"))
    failing("rename_nonempty_onto_nonempty", os.rename, p("fail", "a", "full"), p("fail", "b", "full2"))
    failing("rename_file_onto_dir", os.rename, p("fail", "a", "file"), p("fail", "a", "emptyd"))
    failing("rename_fifo_onto_dir", os.rename, p("fail", "a", "fifo"), p("fail", "a", "emptyd"))
    failing("rename_sock_onto_dir", os.rename, p("fail", "a", "sock"), p("fail", "b", "full2"))
    failing("rename_chr_onto_dir", os.rename, p("fail", "a", "chr"), p("fail", "a", "emptyd"))
    failing("rename_dir_onto_file", os.rename, p("fail", "a", "emptyd"), p("fail", "a", "file"))
    failing("rename_dir_onto_fifo", os.rename, p("fail", "a", "emptyd"), p("fail", "a", "fifo"))
    failing("rename_dir_onto_sock", os.rename, p("fail", "a", "emptyd"), p("fail", "a", "sock"))
    failing("rename_dir_into_itself", os.rename, p("fail", "a", "full"), p("fail", "a", "full", "sub"))
    failing("rename_missing", os.rename, p("fail", "a", "nope"), p("fail", "b", "nope"))
    failing(
        "rename_noreplace",
        lambda a, b: _renameat2(a, b, 1),
        p("fail", "a", "file"),
        p("fail", "a", "fifo"),
    )
    failing("rename_sticky_other", os.rename, p("fail", "sticky", "roots"), p("fail", "sticky", "mine"), user=True)
    failing("rename_sticky_dir_other", os.rename, p("fail", "sticky", "rootd"), p("fail", "a", "x"), user=True)
    failing("rename_ro_parent", os.rename, p("fail", "ro", "f"), p("fail", "a", "x"), user=True)
    failing("unlink_dir", os.unlink, p("fail", "a", "emptyd"))
    failing("unlink_missing", os.unlink, p("fail", "a", "nope"))
    failing("unlink_sticky_other", os.unlink, p("fail", "sticky", "roots"), user=True)
    failing("unlink_ro_parent", os.unlink, p("fail", "ro", "f"), user=True)
    failing("rmdir_nonempty", os.rmdir, p("fail", "a", "full"))
    failing("rmdir_file", os.rmdir, p("fail", "a", "file"))
    failing("rmdir_fifo", os.rmdir, p("fail", "a", "fifo"))
    failing("rmdir_sticky_other", os.rmdir, p("fail", "sticky", "rootd"), user=True)
    failing("rmdir_missing", os.rmdir, p("fail", "a", "nope"))
    failing("rmdir_dot", os.rmdir, p("fail", "a", "emptyd", "."))
    failing("link_onto_existing", os.link, p("fail", "a", "file"), p("fail", "a", "fifo"))


# 4. Moving a directory to a new parent needs write permission on it.
def class_move():
    os.mkdir(p("mv"), 0o777)
    for d in ("src", "dst"):
        os.mkdir(p("mv", d), 0o777)
        os.chown(p("mv", d), NOBODY, NOGROUP)
    os.mkdir(p("mv", "src", "rootdir"), 0o755)  # root's, not writable by nobody
    os.mkdir(p("mv", "src", "rootdir2"), 0o755)
    os.mkdir(p("mv", "src", "opendir"), 0o777)
    os.close(os.open(p("mv", "src", "rootfile"), os.O_CREAT | os.O_WRONLY, 0o644))
    record(
        "move.dir_new_parent_no_write",
        as_user(NOBODY, NOGROUP, [], lambda: code(os.rename, p("mv", "src", "rootdir"), p("mv", "dst", "rootdir"))),
    )
    record(
        "move.dir_same_parent_no_write",
        as_user(NOBODY, NOGROUP, [], lambda: code(os.rename, p("mv", "src", "rootdir2"), p("mv", "src", "renamed"))),
    )
    record(
        "move.dir_new_parent_writable",
        as_user(NOBODY, NOGROUP, [], lambda: code(os.rename, p("mv", "src", "opendir"), p("mv", "dst", "opendir"))),
    )
    record(
        "move.file_new_parent_not_writable",
        as_user(NOBODY, NOGROUP, [], lambda: code(os.rename, p("mv", "src", "rootfile"), p("mv", "dst", "rootfile"))),
    )
    record("move.after", " ".join(sorted(os.listdir(p("mv", "src")))) + " | " + " ".join(sorted(os.listdir(p("mv", "dst")))))
    # The moved directory's own times and link count, and its new "..".
    os.mkdir(p("mv", "src", "moved"), 0o755)
    os.mkdir(p("mv", "src", "moved", "child"), 0o755)
    before = times(p("mv", "src", "moved"))
    time.sleep(NAP)
    os.rename(p("mv", "src", "moved"), p("mv", "dst", "moved"))
    after = times(p("mv", "dst", "moved"))
    record(
        "move.moved_dir",
        "ctime=%s mtime=%s nlink=%d dotdot=%s"
        % (
            "changed" if after[0] != before[0] else "same",
            "changed" if after[1] != before[1] else "same",
            os.lstat(p("mv", "dst", "moved")).st_nlink,
            os.path.samefile(p("mv", "dst", "moved", ".."), p("mv", "dst")),
        ),
    )
    # Replacing an empty directory by a directory from another parent.
    os.mkdir(p("mv", "src", "d2"), 0o755)
    os.mkdir(p("mv", "dst", "empty"), 0o755)
    record("move.onto_empty_dir", code(os.rename, p("mv", "src", "d2"), p("mv", "dst", "empty")))
    # A file replaced by rename keeps its other names, with one link less
    # and a new ctime.
    os.close(os.open(p("mv", "dst", "victim"), os.O_CREAT | os.O_WRONLY, 0o644))
    os.link(p("mv", "dst", "victim"), p("mv", "dst", "victim2"))
    os.close(os.open(p("mv", "src", "newer"), os.O_CREAT | os.O_WRONLY, 0o644))
    before = times(p("mv", "dst", "victim2"))
    time.sleep(NAP)
    c = code(os.rename, p("mv", "src", "newer"), p("mv", "dst", "victim"))
    record(
        "move.replaced_other_name",
        "%s nlink=%d ctime=%s"
        % (c, os.lstat(p("mv", "dst", "victim2")).st_nlink, "changed" if times(p("mv", "dst", "victim2"))[0] != before[0] else "same"),
    )
    # RENAME_EXCHANGE of a directory and a file across parents.
    os.mkdir(p("mv", "src", "xd"), 0o755)
    os.close(os.open(p("mv", "dst", "xf"), os.O_CREAT | os.O_WRONLY, 0o644))
    c = code(_renameat2, p("mv", "src", "xd"), p("mv", "dst", "xf"), 2)
    record(
        "move.exchange",
        "%s %s %s"
        % (c, own(p("mv", "src", "xd")), own(p("mv", "dst", "xf"))),
    )
    # RENAME_WHITEOUT (overlayfs): a 0:0 character device takes the old
    # name; as root and in a setgid directory, over a file and over nothing.
    os.mkdir(p("mv", "wo"), 0o777)
    os.chown(p("mv", "wo"), 0, OTHER)
    os.chmod(p("mv", "wo"), 0o2777)
    for n in ("a", "b", "c"):
        os.close(os.open(p("mv", "wo", n), os.O_CREAT | os.O_WRONLY, 0o644))
    os.mkdir(p("mv", "wo", "dir"), 0o755)
    res = []
    for src, dst in (("a", "new"), ("b", "c"), ("dir", "dir2"), ("c", "c")):
        before = times(p("mv", "wo"))
        time.sleep(NAP)
        c = code(_renameat2, p("mv", "wo", src), p("mv", "wo", dst), 4)
        st = os.lstat(p("mv", "wo", src))
        res.append(
            "%s>%s=%s,%o,%d:%d,rdev=%d,nlink=%d,dir=%s"
            % (src, dst, c, st.st_mode, st.st_uid, st.st_gid, st.st_rdev, st.st_nlink,
               "changed" if times(p("mv", "wo")) != before else "same")
        )
    res.append("wo_nlink=%d" % os.lstat(p("mv", "wo")).st_nlink)
    res.append("noreplace=" + code(_renameat2, p("mv", "wo", "new"), p("mv", "wo", "a"), 5))
    res.append("exchange=" + code(_renameat2, p("mv", "wo", "new"), p("mv", "wo", "a"), 6))
    record("move.whiteout", " ".join(res))
    record("move.whiteout_nobody", as_user(NOBODY, NOGROUP, [], lambda: code(_renameat2, p("mv", "wo", "new"), p("mv", "wo", "n2"), 4)))
    # nlink of both parents after a successful directory move.
    record("move.nlink", "%d %d" % (os.lstat(p("mv", "src")).st_nlink, os.lstat(p("mv", "dst")).st_nlink))


# 5. rename and unlink of sockets, FIFOs and device nodes, with times.
def class_kinds():
    os.mkdir(p("kinds"), 0o777)
    os.mkdir(p("kinds", "x"), 0o777)
    os.mkdir(p("kinds", "y"), 0o777)


    def mk(kind, path):
        if kind == "fifo":
            os.mkfifo(path, 0o644)
        elif kind == "sock":
            os.mknod(path, stat.S_IFSOCK | 0o644)
        elif kind == "chr":
            os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
        elif kind == "blk":
            os.mknod(path, stat.S_IFBLK | 0o644, os.makedev(7, 0))
        elif kind == "file":
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        elif kind == "dir":
            os.mkdir(path, 0o755)


    KINDS = ["file", "fifo", "sock", "chr", "blk"]
    for k in KINDS:
        for t in KINDS + ["dir", "nonempty"]:
            src = p("kinds", "x", k + "_" + t)
            mk(k, src)
            dst = p("kinds", "y", "t_" + k + "_" + t)
            if t == "nonempty":
                mk("dir", dst)
                mk("file", os.path.join(dst, "inner"))
            else:
                mk(t, dst)
            st_src = times(src)
            st_x = times(p("kinds", "x"))
            st_y = times(p("kinds", "y"))
            time.sleep(NAP)
            c = code(os.rename, src, dst)
            res = [c]
            if c == "ok":
                res.append("src_ctime=" + ("changed" if times(dst)[0] != st_src[0] else "same"))
                res.append("mode=%o rdev=%d nlink=%d" % (os.lstat(dst).st_mode, os.lstat(dst).st_rdev, os.lstat(dst).st_nlink))
            else:
                res.append("src_still=" + str(os.path.lexists(src)))
            res.append("x=" + ("changed" if times(p("kinds", "x")) != st_x else "same"))
            res.append("y=" + ("changed" if times(p("kinds", "y")) != st_y else "same"))
            record("kinds.rename_%s_onto_%s" % (k, t), " ".join(res))
        # rename over nothing, to a new parent
        src = p("kinds", "x", "lone_" + k)
        mk(k, src)
        record("kinds.rename_%s_new" % k, code(os.rename, src, p("kinds", "y", "lone_" + k)) + " " + own(p("kinds", "y", "lone_" + k)))
        # link, then unlink one name: nlink and ctime
        a = p("kinds", "x", "ln_" + k)
        mk(k, a)
        c = code(os.link, a, p("kinds", "y", "ln2_" + k))
        st = times(a)
        ty = times(p("kinds", "y"))
        time.sleep(NAP)
        u = code(os.unlink, p("kinds", "y", "ln2_" + k))
        record(
            "kinds.link_unlink_%s" % k,
            "%s %s nlink=%d ctime=%s dir=%s"
            % (
                c,
                u,
                os.lstat(a).st_nlink,
                "changed" if times(a)[0] != st[0] else "same",
                "changed" if times(p("kinds", "y")) != ty else "same",
            ),
        )
        # rename onto another name of the same inode does nothing
        c = code(os.link, a, p("kinds", "x", "same_" + k))
        st = times(a)
        time.sleep(NAP)
        r = code(os.rename, a, p("kinds", "x", "same_" + k))
        record(
            "kinds.rename_same_inode_%s" % k,
            "%s %s both=%s ctime=%s"
            % (c, r, os.path.lexists(a) and os.path.lexists(p("kinds", "x", "same_" + k)), "changed" if times(a)[0] != st[0] else "same"),
        )
        # unlink of a socket, fifo or device node by a non-owner in a sticky dir
        os.makedirs(p("kinds", "st"), exist_ok=True)
        os.chmod(p("kinds", "st"), 0o1777)
        n = p("kinds", "st", k)
        mk(k, n)
        record("kinds.sticky_unlink_%s" % k, as_user(NOBODY, NOGROUP, [], lambda: code(os.unlink, n)))


# 6. Link count at the maximum: reported separately by the Rust test (it
#    takes many calls); here only the directory link counts.
def class_nlink():
    os.mkdir(p("nl"), 0o777)
    for i in range(5):
        os.mkdir(p("nl", "d%d" % i))
    os.rmdir(p("nl", "d0"))
    os.rename(p("nl", "d1"), p("nl", "d2", "d1"))
    record("nlink.dirs", "%d %d" % (os.lstat(p("nl")).st_nlink, os.lstat(p("nl", "d2")).st_nlink))


# 7. ftruncate on descriptors opened with only creation flags.
def class_ftruncate():
    os.mkdir(p("trunc"), 0o777)


    def ftr(flags, mode, size, pre=None):
        path = p("trunc", "f%d_%o_%d_%s" % (flags, mode, size, pre))
        if pre is not None:
            with open(path, "wb") as f:
                f.write(b"x" * pre)
            os.chmod(path, 0o666)
        res = []
        try:
            fd = os.open(path, flags, mode)
        except OSError as e:
            return "open " + errno.errorcode[e.errno]
        res.append(code(os.ftruncate, fd, size))
        res.append(code(os.write, fd, b"ab"))
        os.close(fd)
        st = os.lstat(path)
        res.append("size=%d mode=%o" % (st.st_size, st.st_mode))
        return " ".join(res)


    def ftr_all():
        out = []
        C, X, T = os.O_CREAT, os.O_EXCL, os.O_TRUNC
        for flags, name in [
            (C, "creat"),
            (C | X, "creat_excl"),
            (C | T, "creat_trunc"),
            (C | os.O_WRONLY, "creat_wronly"),
            (C | os.O_RDWR | X, "creat_rdwr_excl"),
        ]:
            for mode in (0o0, 0o444, 0o644):
                out.append("%s/%o=%s" % (name, mode, ftr(flags, mode, 5)))
            out.append("%s/pre=%s" % (name, ftr(flags, 0o644, 5, pre=10)))
        return " ; ".join(out)


    record("ftruncate.root", ftr_all())
    os.mkdir(p("trunc2"), 0o777)
    os.rename(p("trunc"), p("trunc_root"))
    os.rename(p("trunc2"), p("trunc"))
    record("ftruncate.nobody", as_user(NOBODY, NOGROUP, [], ftr_all))


# 8. Writing to, truncating or chowning a setuid/setgid file clears the bits
#    (the kernel's file_remove_privs), as chmod/12.t of pjdfstest checks.
def class_kill():
    os.mkdir(p("kill"), 0o777)


    def kill_case(name, mode, owner, group, user, action):
        path = p("kill", name)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        os.chown(path, owner, group)
        os.chmod(path, mode)

        def act():
            if action == "write":
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"x")
                finally:
                    os.close(fd)
            elif action == "pwrite_end":
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(fd, b"yz")
                finally:
                    os.close(fd)
            elif action == "truncate":
                os.truncate(path, 3)
            elif action == "ftruncate":
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, 2)
                finally:
                    os.close(fd)
            elif action == "open_trunc":
                os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
            elif action == "creat_trunc":
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            elif action == "chown_self":
                os.chown(path, -1, NOGROUP)
            return "ok"

        if user is None:
            c = code(act)
        else:
            c = as_user(user[0], user[1], user[2], lambda: code(act))
        record("kill." + name, c + " " + own(path))


    for action in ("write", "pwrite_end", "truncate", "ftruncate", "open_trunc", "creat_trunc"):
        kill_case("suid_other_" + action, 0o4777, 0, 0, (NOBODY, NOGROUP, []), action)
        kill_case("sgid_other_" + action, 0o2777, 0, 0, (NOBODY, NOGROUP, []), action)
        kill_case("sgid_noexec_" + action, 0o2666, 0, 0, (NOBODY, NOGROUP, []), action)
        kill_case("suid_owner_" + action, 0o4777, NOBODY, NOGROUP, (NOBODY, NOGROUP, []), action)
        kill_case("suid_root_" + action, 0o6777, NOBODY, NOGROUP, None, action)
    kill_case("sgid_chown_by_owner", 0o2775, NOBODY, OTHER, (NOBODY, NOGROUP, [OTHER]), "chown_self")
    kill_case("sgid_noexec_chown_by_owner", 0o2664, NOBODY, OTHER, (NOBODY, NOGROUP, []), "chown_self")
    kill_case("sgid_noexec_chown_by_member", 0o2664, NOBODY, OTHER, (NOBODY, NOGROUP, [OTHER]), "chown_self")
    kill_case("suid_chown_by_owner", 0o4775, NOBODY, OTHER, (NOBODY, NOGROUP, [OTHER]), "chown_self")


# 9. Namespace and xattr calls on a file that is open (with data written
#    and not yet committed) show their ctime at once, and the commit at
#    close does not take it back.
def class_open():
    os.mkdir(p("open"), 0o777)
    ops = ["link", "rename", "unlink_other", "rename_over_other_name", "exchange", "setxattr", "removexattr", "chmod", "chown"]
    for op in ops:
        f = p("open", op)
        fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, b"hello")
        if op in ("unlink_other", "rename_over_other_name"):
            os.link(f, f + ".2")
        if op == "removexattr":
            os.setxattr(f, "user.x", b"1")
        if op == "exchange":
            os.close(os.open(f + ".x", os.O_CREAT | os.O_WRONLY, 0o644))
        t0 = times(f)[0]
        time.sleep(NAP)
        if op == "link":
            os.link(f, f + ".l")
        elif op == "rename":
            os.rename(f, f + ".r")
            f = f + ".r"
        elif op == "unlink_other":
            os.unlink(f + ".2")
        elif op == "rename_over_other_name":
            g = f + ".src"
            os.close(os.open(g, os.O_CREAT | os.O_WRONLY, 0o644))
            os.rename(g, f + ".2")
        elif op == "exchange":
            _renameat2(f, f + ".x", 2)
            f = f + ".x"
        elif op == "setxattr":
            os.setxattr(f, "user.x", b"1")
        elif op == "removexattr":
            os.removexattr(f, "user.x")
        elif op == "chmod":
            os.chmod(f, 0o600)
        elif op == "chown":
            os.chown(f, NOBODY, NOGROUP)
        t1 = times(f)[0]
        os.write(fd, b"more")
        os.close(fd)
        t2 = times(f)[0]
        st = os.lstat(f)
        record(
            "open." + op,
            "ctime=%s after_close=%s nlink=%d size=%d"
            % ("changed" if t1 != t0 else "same", "kept" if t2 >= t1 else "went_back", st.st_nlink, st.st_size),
        )


for name in WANT or ['own', 'chmod', 'fail', 'move', 'kinds', 'nlink', 'ftruncate', 'kill', 'open']:
    globals()["class_" + name]()
print("\n".join(out))
