/* Preloaded into runsc (gVisor) sandboxes only.
 *
 * Debian's 2022 runsc rejects statx(2) calls that carry AT_NO_AUTOMOUNT with EINVAL, and
 * bookworm's coreutils (ls, stat, cp, ...) always pass it, so those tools fail inside
 * gVisor. Automount points do not exist in a sandbox, so dropping the flag changes nothing
 * else. Installed through /etc/ld.so.preload (a read-only bind mount), never in templates.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    return (int)syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
}
