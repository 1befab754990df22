/* declawd-launchns: run a command in a mount namespace of its own, with a detached mount
 * (an fd from fsmount, inherited) attached at a path first.
 *
 *   declawd-launchns MOUNT_FD TARGET COMMAND [ARG...]
 *
 * The node starts an OCI runtime through it, so a sandbox's rootfs overlay exists in the
 * runtime's namespace (and the container's copy of it) and never in the host's mount table,
 * which every runc start reads (see runtime/overlay.py). The namespace is private: nothing
 * mounted in it propagates back to the host. When the last process in it exits (runc after
 * `run -d`; runsc's gofer and sandbox when the container ends) it goes, and the mount with it.
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
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

static int fail(const char *what, const char *arg) {
    fprintf(stderr, "declawd-launchns: %s %s: %s\n", what, arg, strerror(errno));
    return 125;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: declawd-launchns MOUNT_FD TARGET COMMAND [ARG...]\n");
        return 125;
    }
    char *end = NULL;
    errno = 0;
    long fd = strtol(argv[1], &end, 10);
    if (errno != 0 || end == argv[1] || *end != '\0' || fd < 0 || fd > 65535) {
        errno = EINVAL;
        return fail("mount fd", argv[1]);
    }
    if (unshare(CLONE_NEWNS) != 0)
        return fail("unshare", "CLONE_NEWNS");
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return fail("make private", "/");
    if (syscall(SYS_move_mount, (int)fd, "", AT_FDCWD, argv[2], MOVE_MOUNT_F_EMPTY_PATH) != 0)
        return fail("attach the mount at", argv[2]);
    close((int)fd);
    execvp(argv[3], &argv[3]);
    return fail("exec", argv[3]);
}
