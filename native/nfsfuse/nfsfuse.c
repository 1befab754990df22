/*
 * declawd-nfsfuse: an NFSv3 client mounted through FUSE, for hosts whose kernel has no NFS.
 *
 * The cluster tests' blob store is an NFS export (NFS-Ganesha, tests/shared_fs.py) that every
 * "host" mounts. The test machine's kernel has no NFS client (CONFIG_NFS_FS unset) but has
 * FUSE, so this program is the client: each FUSE operation is one synchronous libnfs call, on
 * one connection (a mutex serialises them).
 *
 * Permissions are the kernel's to check (default_permissions), against attributes it fetches
 * afresh for each check, as on a local filesystem; the client acts as the mounting user (root,
 * the export has No_Root_Squash) and gives what it creates to the caller. The caller's
 * credentials are not sent instead because libnfs resolves every path from the export's root
 * with the call's credentials: a caller allowed into a directory but not through its parents
 * (a live volume's tree bind-mounted into a sandbox, under a 0700 directory) would be refused,
 * where a kernel client starts from the directory's file handle. What is not carried over: a
 * setgid directory's group (a new entry gets the caller's gid).
 *
 * Coherence, the point of the exercise: nothing is cached here. libnfs's directory cache is
 * off (it has no page cache unless asked), and init() sets the kernel's attribute, entry and
 * negative timeouts to 0, so every lookup and stat is a round trip to the server (NFS's
 * `actimeo=0,lookupcache=none`). Writes go straight to the server (no writeback cache) as
 * UNSTABLE WRITEs; fsync is a COMMIT. Read data may sit in the kernel's page cache while a
 * file stays open and is dropped at the next open or when the file's size or mtime changes
 * (close-to-open, NFS's default). An unlinked file is removed at once (hard_remove; no
 * silly rename): another opener of it, here or on another host, gets ESTALE.
 *
 * Why NFSv3: libnfs 4.0's NFSv4 renews no lease (an idle mount's client id expires), makes
 * every O_CREAT an EXCLUSIVE4 create (EEXIST on an existing file, the verifier left in the
 * times) and sets attributes through an OPEN, so chmod, chown and utimes of a directory fail
 * with EISDIR. Its NFSv3 path has none of these.
 *
 * Usage: declawd-nfsfuse 'nfs://SERVER/PATH?version=3&nfsport=N&mountport=M' MOUNTPOINT [FUSE
 * options, e.g. -f -o allow_other]. Errors are libnfs's negative errno values, returned as
 * they are.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <unistd.h>

#include <nfsc/libnfs.h>

#define SUBTYPE "declawd-nfsfuse"

static struct nfs_context *nfs;
static pthread_mutex_t nfs_lock = PTHREAD_MUTEX_INITIALIZER;

/* What fi->fh points to: an open file or an open directory (FUSE may hand either to setattr). */
struct handle {
	struct nfsfh *file;
	struct nfsdir *dir;
	int listed; /* readdir ran once: a second one (rewinddir) reads the directory anew */
};

static struct handle *handle_of(struct fuse_file_info *fi)
{
	return fi ? (struct handle *)(uintptr_t)fi->fh : NULL;
}

static struct nfsfh *file_of(struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	return h ? h->file : NULL;
}

static void enter(void)
{
	pthread_mutex_lock(&nfs_lock);
}

static int leave(int rc)
{
	pthread_mutex_unlock(&nfs_lock);
	return rc;
}

/* Under the lock: what the caller created (made by us, as the mounting user) becomes the
 * caller's; on failure it is removed again (`undo`), so no one else's entry is left behind. */
static int give(const char *path, struct nfsfh *fh,
		int (*undo)(struct nfs_context *, const char *))
{
	struct fuse_context *ctx = fuse_get_context();
	int rc;

	if (ctx->uid == getuid() && ctx->gid == getgid())
		return 0;
	rc = fh ? nfs_fchown(nfs, fh, (int)ctx->uid, (int)ctx->gid)
		: nfs_lchown(nfs, path, (int)ctx->uid, (int)ctx->gid);
	if (rc != 0)
		undo(nfs, path);
	return rc;
}

static void to_stat(const struct nfs_stat_64 *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_dev = n->nfs_dev;
	st->st_ino = n->nfs_ino;
	st->st_mode = n->nfs_mode;
	st->st_nlink = n->nfs_nlink;
	st->st_uid = n->nfs_uid;
	st->st_gid = n->nfs_gid;
	st->st_rdev = n->nfs_rdev;
	st->st_size = n->nfs_size;
	st->st_blksize = n->nfs_blksize;
	st->st_blocks = n->nfs_blocks;
	st->st_atim.tv_sec = n->nfs_atime;
	st->st_atim.tv_nsec = n->nfs_atime_nsec;
	st->st_mtim.tv_sec = n->nfs_mtime;
	st->st_mtim.tv_nsec = n->nfs_mtime_nsec;
	st->st_ctim.tv_sec = n->nfs_ctime;
	st->st_ctim.tv_nsec = n->nfs_ctime_nsec;
}

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	/* The kernel caches nothing it would have to revalidate: see the header. */
	cfg->attr_timeout = 0;
	cfg->entry_timeout = 0;
	cfg->negative_timeout = 0;
	cfg->ac_attr_timeout_set = 0;
	cfg->kernel_cache = 0;
	cfg->auto_cache = 0;
	cfg->hard_remove = 1;
	cfg->use_ino = 1;
	cfg->readdir_ino = 1;
	cfg->set_uid = 0;
	cfg->set_gid = 0;
	return NULL;
}

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct nfs_stat_64 n;
	struct nfsfh *fh = file_of(fi);
	int rc;

	enter();
	rc = fh ? nfs_fstat64(nfs, fh, &n) : nfs_lstat64(nfs, path, &n);
	leave(0);
	if (rc == 0)
		to_stat(&n, st);
	return rc;
}

static int op_readlink(const char *path, char *buf, size_t size)
{
	char *target = NULL;
	int rc;

	if (size == 0)
		return -EINVAL;
	enter();
	rc = leave(nfs_readlink2(nfs, path, &target));
	if (rc == 0) {
		strncpy(buf, target, size - 1);
		buf[size - 1] = '\0';
	}
	free(target);
	return rc;
}

static int op_mknod(const char *path, mode_t mode, dev_t rdev)
{
	int rc;

	enter();
	rc = nfs_mknod(nfs, path, (int)mode, (int)rdev);
	if (rc == 0)
		rc = give(path, NULL, nfs_unlink);
	return leave(rc);
}

static int op_mkdir(const char *path, mode_t mode)
{
	int rc;

	enter();
	rc = nfs_mkdir2(nfs, path, (int)(mode & 07777));
	if (rc == 0)
		rc = give(path, NULL, nfs_rmdir);
	return leave(rc);
}

static int op_unlink(const char *path)
{
	enter();
	return leave(nfs_unlink(nfs, path));
}

static int op_rmdir(const char *path)
{
	enter();
	return leave(nfs_rmdir(nfs, path));
}

static int op_symlink(const char *target, const char *path)
{
	int rc;

	enter();
	rc = nfs_symlink(nfs, target, path);
	if (rc == 0)
		rc = give(path, NULL, nfs_unlink);
	return leave(rc);
}

static int op_rename(const char *from, const char *to, unsigned int flags)
{
	/* NFS has no RENAME_NOREPLACE or RENAME_EXCHANGE: refused rather than done unatomically. */
	if (flags)
		return -EINVAL;
	enter();
	return leave(nfs_rename(nfs, from, to));
}

static int op_link(const char *from, const char *to)
{
	enter();
	return leave(nfs_link(nfs, from, to));
}

/* Attributes are set by path (the kernel resolved symlinks already, so the l- calls): FUSE
 * may pass a directory's handle here, which has no NFS file handle of ours. */
static int op_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	(void)fi;
	enter();
	return leave(nfs_lchmod(nfs, path, (int)(mode & 07777)));
}

static int op_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	(void)fi;
	enter();
	return leave(nfs_lchown(nfs, path, (int)uid, (int)gid));
}

static int op_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct nfsfh *fh = file_of(fi);

	enter();
	if (fh)
		return leave(nfs_ftruncate(nfs, fh, (uint64_t)size));
	return leave(nfs_truncate(nfs, path, (uint64_t)size));
}

static int op_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	struct timeval times[2];
	struct nfs_stat_64 n;
	int i, rc;

	(void)fi;
	if (tv[0].tv_nsec == UTIME_OMIT && tv[1].tv_nsec == UTIME_OMIT)
		return 0;
	enter();
	if (tv[0].tv_nsec == UTIME_NOW && tv[1].tv_nsec == UTIME_NOW)
		return leave(nfs_lutimes(nfs, path, NULL)); /* the server's clock, as NFS does */
	if (tv[0].tv_nsec == UTIME_OMIT || tv[1].tv_nsec == UTIME_OMIT) {
		rc = nfs_lstat64(nfs, path, &n);
		if (rc != 0)
			return leave(rc);
		times[0].tv_sec = (time_t)n.nfs_atime;
		times[0].tv_usec = (suseconds_t)(n.nfs_atime_nsec / 1000);
		times[1].tv_sec = (time_t)n.nfs_mtime;
		times[1].tv_usec = (suseconds_t)(n.nfs_mtime_nsec / 1000);
	}
	for (i = 0; i < 2; i++) {
		if (tv[i].tv_nsec == UTIME_OMIT)
			continue;
		if (tv[i].tv_nsec == UTIME_NOW) {
			gettimeofday(&times[i], NULL);
			continue;
		}
		times[i].tv_sec = tv[i].tv_sec;
		times[i].tv_usec = tv[i].tv_nsec / 1000; /* libnfs sets times to the microsecond */
	}
	return leave(nfs_lutimes(nfs, path, times));
}

/* The flags libnfs acts on. O_APPEND is left to the kernel, which gives each write its offset. */
static int nfs_flags(int flags)
{
	return flags & (O_ACCMODE | O_TRUNC | O_SYNC | O_DSYNC);
}

static int keep(struct fuse_file_info *fi, struct nfsfh *file, struct nfsdir *dir)
{
	struct handle *h = calloc(1, sizeof(*h));

	if (h == NULL) {
		if (file)
			nfs_close(nfs, file);
		if (dir)
			nfs_closedir(nfs, dir);
		return -ENOMEM;
	}
	h->file = file;
	h->dir = dir;
	fi->fh = (uint64_t)(uintptr_t)h;
	return 0;
}

static int op_open(const char *path, struct fuse_file_info *fi)
{
	struct nfsfh *fh = NULL;
	int rc;

	enter();
	rc = nfs_open(nfs, path, nfs_flags(fi->flags), &fh);
	if (rc == 0)
		rc = keep(fi, fh, NULL);
	return leave(rc);
}

/* O_EXCL is a GUARDED create: of two hosts creating one name, exactly one gets EEXIST. */
static int op_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct nfsfh *fh = NULL;
	int rc;

	enter();
	rc = nfs_create(nfs, path, nfs_flags(fi->flags) | O_CREAT | (fi->flags & O_EXCL),
			(int)(mode & 07777), &fh);
	if (rc != 0)
		return leave(rc);
	rc = give(path, fh, nfs_unlink);
	if (rc != 0) {
		nfs_close(nfs, fh);
		return leave(rc);
	}
	return leave(keep(fi, fh, NULL));
}

static int op_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)path;
	enter();
	return leave(nfs_pread(nfs, file_of(fi), (uint64_t)off, size, buf));
}

static int op_write(const char *path, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)path;
	enter();
	return leave(nfs_pwrite(nfs, file_of(fi), (uint64_t)off, size, buf));
}

static int op_statfs(const char *path, struct statvfs *st)
{
	struct nfs_statvfs_64 sv;
	int rc;

	enter();
	rc = leave(nfs_statvfs64(nfs, path, &sv));
	if (rc != 0)
		return rc;
	memset(st, 0, sizeof(*st));
	st->f_bsize = sv.f_bsize;
	st->f_frsize = sv.f_frsize;
	st->f_blocks = sv.f_blocks;
	st->f_bfree = sv.f_bfree;
	st->f_bavail = sv.f_bavail;
	st->f_files = sv.f_files;
	st->f_ffree = sv.f_ffree;
	st->f_favail = sv.f_favail;
	st->f_fsid = sv.f_fsid;
	st->f_flag = sv.f_flag;
	st->f_namemax = sv.f_namemax;
	return 0;
}

static int op_release(const char *path, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	(void)path;
	enter();
	nfs_close(nfs, h->file);
	leave(0);
	free(h);
	return 0;
}

static int op_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	(void)path;
	(void)datasync;
	enter();
	return leave(nfs_fsync(nfs, file_of(fi)));
}

static int op_opendir(const char *path, struct fuse_file_info *fi)
{
	struct nfsdir *dir = NULL;
	int rc;

	enter();
	rc = nfs_opendir(nfs, path, &dir);
	if (rc == 0)
		rc = keep(fi, NULL, dir);
	return leave(rc);
}

static mode_t type_bits(uint32_t type)
{
	/* NF3REG .. NF3FIFO (RFC 1813's ftype3) */
	static const mode_t bits[] = {0, S_IFREG, S_IFDIR, S_IFBLK, S_IFCHR, S_IFLNK, S_IFSOCK, S_IFIFO};

	return type < sizeof(bits) / sizeof(bits[0]) ? bits[type] : 0;
}

/* Every entry in one call (offset 0): libfuse keeps them for the directory's later reads. */
static int op_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	struct handle *h = handle_of(fi);
	struct nfsdirent *e;
	struct stat st;
	int rc = 0;

	(void)off;
	(void)flags;
	enter();
	if (h->listed) {
		struct nfsdir *fresh = NULL;

		rc = nfs_opendir(nfs, path, &fresh);
		if (rc != 0)
			return leave(rc);
		nfs_closedir(nfs, h->dir);
		h->dir = fresh;
	}
	h->listed = 1;
	while ((e = nfs_readdir(nfs, h->dir)) != NULL) {
		memset(&st, 0, sizeof(st));
		st.st_ino = e->inode;
		st.st_mode = (e->mode & 07777) | type_bits(e->type);
		if (filler(buf, e->name, &st, 0, 0))
			break;
	}
	return leave(rc);
}

static int op_releasedir(const char *path, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	(void)path;
	enter();
	nfs_closedir(nfs, h->dir);
	leave(0);
	free(h);
	return 0;
}

static int op_access(const char *path, int mask)
{
	struct nfs_stat_64 n;

	enter();
	if (mask == F_OK)
		return leave(nfs_lstat64(nfs, path, &n));
	return leave(nfs_access(nfs, path, mask));
}

static const struct fuse_operations ops = {
	.init = op_init,
	.getattr = op_getattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.chmod = op_chmod,
	.chown = op_chown,
	.truncate = op_truncate,
	.utimens = op_utimens,
	.open = op_open,
	.create = op_create,
	.read = op_read,
	.write = op_write,
	.statfs = op_statfs,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.releasedir = op_releasedir,
	.access = op_access,
};

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct nfs_url *url;
	char *fsname;
	int i, rc;

	if (argc < 3 || strncmp(argv[1], "nfs://", 6) != 0) {
		fprintf(stderr, "usage: %s nfs://SERVER/PATH?version=3&nfsport=N&mountport=M "
				"MOUNTPOINT [FUSE options]\n", argv[0]);
		return 2;
	}
	nfs = nfs_init_context();
	if (nfs == NULL) {
		fprintf(stderr, SUBTYPE ": cannot make an NFS context\n");
		return 1;
	}
	nfs_set_dircache(nfs, 0);
	nfs_set_autoreconnect(nfs, -1); /* a hard mount: retry a lost server for ever */
	nfs_umask(nfs, 0);		/* modes arrive with the caller's umask applied */
	url = nfs_parse_url_dir(nfs, argv[1]); /* also applies version, nfsport, mountport */
	if (url == NULL) {
		fprintf(stderr, SUBTYPE ": %s: %s\n", argv[1], nfs_get_error(nfs));
		return 1;
	}
	/* Mounted before FUSE is, so an unreachable server fails the command, not the first op. */
	if (nfs_mount(nfs, url->server, url->path) != 0) {
		fprintf(stderr, SUBTYPE ": mount %s: %s\n", argv[1], nfs_get_error(nfs));
		return 1;
	}
	if (asprintf(&fsname, "-ofsname=%s", argv[1]) < 0)
		return 1;
	if (fuse_opt_add_arg(&args, argv[0]) || fuse_opt_add_arg(&args, argv[2]) ||
	    fuse_opt_add_arg(&args, "-osubtype=" SUBTYPE) || fuse_opt_add_arg(&args, fsname) ||
	    fuse_opt_add_arg(&args, "-odefault_permissions"))
		return 1;
	for (i = 3; i < argc; i++)
		if (fuse_opt_add_arg(&args, argv[i]))
			return 1;
	rc = fuse_main(args.argc, args.argv, &ops, NULL);
	fuse_opt_free_args(&args);
	free(fsname);
	nfs_destroy_url(url);
	nfs_destroy_context(nfs);
	return rc;
}
