/* declawd-launchns: run a command in a mount namespace of its own, with a detached mount
 * (an fd from fsmount, inherited) attached at a path first, and the host's per-sandbox
 * subtrees pruned from that namespace.
 *
 *   declawd-launchns [--prune DIR [--keep PATH]...]... MOUNT_FD TARGET COMMAND [ARG...]
 *
 * The node starts an OCI runtime through it, so a sandbox's rootfs overlay exists in the
 * runtime's namespace (and the container's copy of it) and never in the host's mount table,
 * which every runc start reads (see runtime/overlay.py). The namespace is private: nothing
 * mounted in it propagates back to the host. When the last process in it exits (the runtime,
 * after `run -d`; the container, runsc's gofer and sandbox have pivoted copies of their own)
 * it goes, and with it every mount that only it held.
 *
 * `--prune DIR` detaches the mount at DIR (and every mount below it) in the new namespace
 * only: the node passes the mount points that hold one mount per live sandbox (the netns
 * directory, the sandboxes' directory) so the runtime reads a table of ~30 lines, not one of
 * two lines per sandbox alive. Each `--keep PATH` after it is a mount below DIR that this
 * sandbox needs (its netns file, its quota disk): cloned before the prune (open_tree) and
 * attached again at PATH after it. A DIR that is not a mount point (or not there) is left as
 * it is: nothing was hidden, and its keeps are not needed. A DIR that is a mount point must
 * be a bind of itself (what is under it is the same directory), or the launch fails.
 *
 * Exit status 125 (and a line on stderr) if a step before the exec fails; otherwise the
 * command's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

#define MAX_PRUNES 8
#define MAX_KEEPS 8

struct prune {
    const char *dir;
    int nkeep;
    const char *keep[MAX_KEEPS];
    int keep_fd[MAX_KEEPS];
};

static int fail(const char *what, const char *arg) {
    fprintf(stderr, "declawd-launchns: %s %s: %s\n", what, arg, strerror(errno));
    return 125;
}

static int usage(void) {
    fprintf(stderr, "usage: declawd-launchns [--prune DIR [--keep PATH]...]... "
                    "MOUNT_FD TARGET COMMAND [ARG...]\n");
    return 125;
}

static int attach(int fd, const char *path) {
    return (int)syscall(SYS_move_mount, fd, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH);
}

int main(int argc, char **argv) {
    struct prune prunes[MAX_PRUNES];
    int nprune = 0, i = 1;
    while (i < argc && strncmp(argv[i], "--", 2) == 0) {
        if (i + 1 >= argc)
            return usage();
        if (strcmp(argv[i], "--prune") == 0) {
            if (nprune == MAX_PRUNES)
                return usage();
            prunes[nprune].dir = argv[i + 1];
            prunes[nprune].nkeep = 0;
            nprune++;
        } else if (strcmp(argv[i], "--keep") == 0) {
            if (nprune == 0 || prunes[nprune - 1].nkeep == MAX_KEEPS)
                return usage();
            struct prune *p = &prunes[nprune - 1];
            p->keep[p->nkeep++] = argv[i + 1];
        } else {
            return usage();
        }
        i += 2;
    }
    if (argc - i < 3)
        return usage();
    char *end = NULL;
    errno = 0;
    long fd = strtol(argv[i], &end, 10);
    if (errno != 0 || end == argv[i] || *end != '\0' || fd < 0 || fd > 65535) {
        errno = EINVAL;
        return fail("mount fd", argv[i]);
    }
    const char *target = argv[i + 1];
    char **command = &argv[i + 2];

    if (unshare(CLONE_NEWNS) != 0)
        return fail("unshare", "CLONE_NEWNS");
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return fail("make private", "/");
    for (int p = 0; p < nprune; p++) {
        struct prune *pr = &prunes[p];
        for (int k = 0; k < pr->nkeep; k++) {
            pr->keep_fd[k] = (int)syscall(SYS_open_tree, AT_FDCWD, pr->keep[k],
                                          OPEN_TREE_CLONE | O_CLOEXEC);
            if (pr->keep_fd[k] < 0)
                return fail("clone the mount at", pr->keep[k]);
        }
        struct stat before, after;
        if (stat(pr->dir, &before) != 0)
            before.st_ino = 0;
        if (umount2(pr->dir, MNT_DETACH) != 0) {
            if (errno != EINVAL && errno != ENOENT)
                return fail("prune", pr->dir);
            for (int k = 0; k < pr->nkeep; k++) /* not a mount point: nothing hidden */
                close(pr->keep_fd[k]);
            continue;
        }
        /* Only a bind mount of the directory onto itself hides nothing but the mounts below
         * it: what is under it now must be the same directory. */
        if (stat(pr->dir, &after) != 0 || after.st_dev != before.st_dev ||
            after.st_ino != before.st_ino) {
            errno = EXDEV;
            return fail("prune (not a bind mount of itself)", pr->dir);
        }
        for (int k = 0; k < pr->nkeep; k++) {
            if (attach(pr->keep_fd[k], pr->keep[k]) != 0)
                return fail("keep the mount at", pr->keep[k]);
            close(pr->keep_fd[k]);
        }
    }
    if (attach((int)fd, target) != 0)
        return fail("attach the mount at", target);
    close((int)fd);
    execvp(command[0], command);
    return fail("exec", command[0]);
}
