/*
 * mkma-scan: the file-system half of `mkma persist`'s upperdir scan (persist/scan.ts) in one
 * process: the walk, every xattr, the lower tree's side. It replaces `find -printf` + `xargs
 * getfattr -d` + one lstat per entry in Node, which measured 3.6× the time of a bare
 * `find -printf` over 101k entries (docs/perf-research.md, figure 4); the TypeScript walk
 * (persist/walk.ts) stays as the fallback when this cannot be built, and the two must give the
 * same scan (test/unit/persist-scan.test.ts runs both).
 *
 *   mkma-scan [-l LOWER] UPPERDIR > records
 *   mkma-scan -h
 *
 * One pass over UPPERDIR, pre-order, each directory's entries sorted by name (by bytes):
 *   - getdents64 (readdir on a descriptor opened O_DIRECTORY|O_NOFOLLOW relative to its parent),
 *     fstatat(AT_SYMLINK_NOFOLLOW), readlinkat for symlinks;
 *   - llistxattr/lgetxattr by the bare name after fchdir() into the directory being read (there
 *     is no *xattrat() before Linux 6.13): one component, never a symlink followed;
 *   - with -l, the lower tree in lock-step: the lower directory is opened next to the upper one
 *     (only where both are real directories and the upper one is not opaque), so each lookup is
 *     one fstatat of one name, and regular files of equal size up to 16 MiB are compared byte
 *     for byte (persist/lower.ts: COMPARE_MAX_BYTES);
 *   - like `find -xdev`, a mount point is listed but not entered (nor its xattrs read).
 *
 * Output, one record per entry (NUL-terminated fields, so any byte of a name survives):
 *   HEADER \0 PATH \0 TARGET \0 { NAME \0 VALUE-HEX \0 } × NXATTR
 *   HEADER = "MODE DEV INO NLINK UID GID SIZE MTIME RDEV NXATTR LOWER"
 *            MODE is st_mode in octal (type bits included), MTIME whole seconds, RDEV st_rdev;
 *   LOWER  = "-" not looked up, "0" nothing there, or
 *            "MODE UID GID SIZE MTIME RDEV CMP", CMP "s" same bytes, "d" different, "-" not compared.
 * Entries that cannot be read go to stderr as find words it, "mkma-scan: 'PATH': reason", and
 * make the exit status 1 (the scan reports them as skipped); 2 is a usage or fatal error.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define COMPARE_MAX ((off_t)16 << 20)
#define OPEN_DIR (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

static char out[1 << 16];
static size_t outn;
static int status;
static dev_t rootdev;
/* "ROOT/rel", grown and shrunk as the walk goes (for the records and the error messages) */
static char path[1 << 16];
static size_t rootlen;

static void flush(void) {
	size_t off = 0;
	while (off < outn) {
		ssize_t w = write(1, out + off, outn - off);
		if (w < 0) {
			if (errno == EINTR) continue;
			perror("mkma-scan: write");
			exit(2);
		}
		off += (size_t)w;
	}
	outn = 0;
}

static void put(const void *p, size_t n) {
	while (n) {
		if (outn == sizeof out) flush();
		size_t k = sizeof out - outn < n ? sizeof out - outn : n;
		memcpy(out + outn, p, k);
		outn += k;
		p = (const char *)p + k;
		n -= k;
	}
}

/* find's wording ("find: 'PATH': reason"), so that the scan reports both the same way */
static void warn_path(int err) {
	fprintf(stderr, "mkma-scan: '%s': %s\n", path, strerror(err));
	status = 1;
}

/* Equal-size regular files: same bytes? Both opened relative to their directories, no symlink followed. */
static int same_bytes(int ufd, int lfd, const char *name, off_t size) {
	static char a[1 << 16], b[1 << 16];
	int fa = openat(ufd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	int fb = fa < 0 ? -1 : openat(lfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	int same = fa >= 0 && fb >= 0;
	for (off_t pos = 0; same && pos < size;) {
		ssize_t na = pread(fa, a, sizeof a, pos), nb = pread(fb, b, sizeof b, pos);
		if (na <= 0 || na != nb || memcmp(a, b, (size_t)na)) same = 0;
		else pos += na;
	}
	if (fa >= 0) close(fa);
	if (fb >= 0) close(fb);
	return same;
}

static const char hexd[] = "0123456789abcdef";
static void entry(int dirfd, int lowerfd, const char *name, size_t pathlen);

static int byname(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/*
 * Lists the directory open at fd (path[0, pathlen)), its entries sorted by name (strcmp: by
 * bytes, the order the scan wants, so Node need not sort); lowerfd: the same directory below,
 * or -1. Closes both.
 */
static void walk(int fd, int lowerfd, size_t pathlen) {
	/*
	 * The directory stays open (as fd) while its subdirectories are walked, but its readdir
	 * stream does not: the names are read first, then the stream (and its ~32 KiB buffer) is
	 * closed, so a deep tree costs one descriptor per level on each side and no buffers.
	 */
	int dfd = dup(fd);
	DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
	if (!d) {
		warn_path(errno);
		if (dfd >= 0) close(dfd);
		close(fd);
		if (lowerfd >= 0) close(lowerfd);
		return;
	}
	/* the names first (one buffer, then pointers into it), sorted */
	char *buf = NULL, **names = NULL;
	size_t len = 0, cap = 0, count = 0;
	struct dirent *e;
	while ((errno = 0, e = readdir(d))) {
		const char *n = e->d_name;
		if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
		size_t nl = strlen(n) + 1;
		if (len + nl > cap) {
			cap = (len + nl) * 2 + 4096;
			char *nb = realloc(buf, cap);
			if (!nb) {
				fputs("mkma-scan: out of memory\n", stderr);
				exit(2);
			}
			buf = nb;
		}
		memcpy(buf + len, n, nl);
		len += nl;
		count++;
	}
	if (errno) warn_path(errno);
	closedir(d);
	if (count) {
		names = malloc(count * sizeof *names);
		if (!names) {
			fputs("mkma-scan: out of memory\n", stderr);
			exit(2);
		}
		size_t k = 0;
		for (size_t off = 0; off < len; off += strlen(buf + off) + 1) names[k++] = buf + off;
		qsort(names, count, sizeof *names, byname);
	}
	if (count && fchdir(fd) < 0) {
		warn_path(errno);
		count = 0;
	}
	for (size_t k = 0; k < count; k++) {
		const char *n = names[k];
		size_t nl = strlen(n);
		if (pathlen + 1 + nl + 1 > sizeof path) {
			fprintf(stderr, "mkma-scan: '%s/%s': File name too long\n", path, n);
			status = 1;
			continue;
		}
		path[pathlen] = '/';
		memcpy(path + pathlen + 1, n, nl + 1);
		entry(fd, lowerfd, n, pathlen + 1 + nl);
		path[pathlen] = 0;
	}
	free(names);
	free(buf);
	close(fd);
	if (lowerfd >= 0) close(lowerfd);
}

static void entry(int dirfd, int lowerfd, const char *name, size_t pathlen) {
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		warn_path(errno);
		return;
	}
	int mine = st.st_dev == rootdev;
	static char names[1 << 16];
	ssize_t xn = mine ? llistxattr(name, names, sizeof names) : 0;
	if (xn < 0) {
		if (errno != ENOTSUP) warn_path(errno);
		xn = 0;
	}
	int count = 0, opaque = 0;
	for (ssize_t i = 0; i < xn; i += (ssize_t)strlen(names + i) + 1) count++;

	/* the lower tree at the same name (never below a mount point, never for a socket) */
	struct stat lst;
	int lower = -1; /* -1 not looked, 0 absent, 1 there */
	if (lowerfd >= 0 && mine && !S_ISSOCK(st.st_mode)) lower = fstatat(lowerfd, name, &lst, AT_SYMLINK_NOFOLLOW) == 0;

	char rec[512];
	int len = snprintf(rec, sizeof rec, "%o %llu %llu %llu %u %u %lld %lld %llu %d ", (unsigned)st.st_mode,
			   (unsigned long long)st.st_dev, (unsigned long long)st.st_ino, (unsigned long long)st.st_nlink, st.st_uid,
			   st.st_gid, (long long)st.st_size, (long long)st.st_mtim.tv_sec, (unsigned long long)st.st_rdev, count);
	put(rec, (size_t)len);
	if (lower == 1) {
		char cmp = '-';
		if (S_ISREG(st.st_mode) && S_ISREG(lst.st_mode) && st.st_size == lst.st_size && st.st_size <= COMPARE_MAX)
			cmp = same_bytes(dirfd, lowerfd, name, st.st_size) ? 's' : 'd';
		len = snprintf(rec, sizeof rec, "%o %u %u %lld %lld %llu %c", (unsigned)lst.st_mode, lst.st_uid, lst.st_gid,
			       (long long)lst.st_size, (long long)lst.st_mtim.tv_sec, (unsigned long long)lst.st_rdev, cmp);
		put(rec, (size_t)len + 1);
	} else {
		put(lower == 0 ? "0" : "-", 2);
	}
	put(path + rootlen + 1, pathlen - rootlen - 1);
	put("", 1);
	char target[4097];
	ssize_t tl = 0;
	if (S_ISLNK(st.st_mode) && (tl = readlinkat(dirfd, name, target, sizeof target - 1)) < 0) {
		warn_path(errno);
		tl = 0;
	}
	target[tl] = 0;
	put(target, (size_t)tl + 1);

	/* the xattrs, in llistxattr's order (getfattr's too) */
	for (ssize_t i = 0; i < xn; i += (ssize_t)strlen(names + i) + 1) {
		static char val[1 << 16];
		static char hex[(1 << 17) + 1];
		ssize_t v = lgetxattr(name, names + i, val, sizeof val);
		if (v < 0) {
			warn_path(errno);
			v = 0;
		}
		if (!strcmp(names + i, "trusted.overlay.opaque") && v == 1 && val[0] == 'y') opaque = 1;
		put(names + i, strlen(names + i) + 1);
		for (ssize_t k = 0; k < v; k++) {
			hex[2 * k] = hexd[(unsigned char)val[k] >> 4];
			hex[2 * k + 1] = hexd[(unsigned char)val[k] & 15];
		}
		put(hex, (size_t)(2 * v));
		put("", 1);
	}

	if (S_ISDIR(st.st_mode) && mine) {
		int fd = openat(dirfd, name, OPEN_DIR);
		if (fd < 0) {
			warn_path(errno);
			return;
		}
		/* below an opaque directory, or where the lower tree has no directory, nothing is looked up */
		int lfd = lower == 1 && S_ISDIR(lst.st_mode) && !opaque ? openat(lowerfd, name, OPEN_DIR) : -1;
		walk(fd, lfd, pathlen);
		/* back in the parent, whose entries come next */
		if (fchdir(dirfd) < 0) {
			warn_path(errno);
			flush();
			exit(2);
		}
	}
}

static void usage(FILE *f) { fputs("usage: mkma-scan [-l LOWER] UPPERDIR\n", f); }

int main(int argc, char **argv) {
	const char *lowerpath = NULL;
	if (argc == 2 && !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "-l")) {
		lowerpath = argv[2];
		argv += 2;
		argc -= 2;
	}
	if (argc != 2) {
		usage(stderr);
		return 2;
	}
	size_t l = strlen(argv[1]);
	while (l > 1 && argv[1][l - 1] == '/') l--;
	if (l + 2 > sizeof path) return 2;
	memcpy(path, argv[1], l);
	path[l] = 0;
	rootlen = l;
	/*
	 * Two descriptors per directory level (upper and lower) are open at the deepest point. The
	 * soft limit is often 1024 (systemd's default for services and logins), which made trees
	 * deeper than ~500 levels report "Too many open files"; the hard limit (524288 by default
	 * under systemd) covers any path that fits in `path`.
	 */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	int fd = open(path, OPEN_DIR);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "mkma-scan: '%s': %s\n", path, strerror(errno));
		return 2;
	}
	rootdev = st.st_dev;
	int lfd = lowerpath ? open(lowerpath, OPEN_DIR) : -1;
	if (lowerpath && lfd < 0) {
		fprintf(stderr, "mkma-scan: '%s': %s\n", lowerpath, strerror(errno));
		return 2;
	}
	walk(fd, lfd, l);
	flush();
	return status;
}
