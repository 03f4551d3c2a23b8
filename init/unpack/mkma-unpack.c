/*
 * mkma-unpack: extracts an mkma image (base.cpio.zst, persistence layers) into a directory,
 * fast. The boot-time replacement for `zstd -dc FILE | busybox cpio -i -d -m`.
 *
 *   mkma-unpack [-v] [-X] [-j N] FILE DEST
 *                                       an mkma image: its shards in parallel (N threads,
 *                                       default: the number of online CPUs); -X: and its
 *                                       %xattrs section
 *   mkma-unpack -l TREE STAGE LAYER...  layers applied to TREE in order (see apply_layers_main)
 *   mkma-unpack -i FILE...              what the init's space check needs from each manifest
 *   mkma-unpack [-v] - DEST             a plain (uncompressed) cpio newc stream on stdin
 *
 * Build: gcc -O2 -static -o mkma-unpack mkma-unpack.c -lzstd -lpthread
 * (builder/unpacker.ts does this, and caches the result).
 *
 * The file layout is defined in format/manifest.ts:
 *
 *   FILE     := DATA MANIFEST
 *   DATA     := zstd frames ("shards"), each decompressing to whole cpio newc entries; only the
 *               last one ends with TRAILER!!!, so each can be extracted on its own
 *   MANIFEST := zstd skippable frame: 8-byte header, BODY, FOOTER
 *   FOOTER   := "MKMA-MANIFEST-LEN" + BODY length in 12 columns + "\n"
 *
 * Of BODY, `data_bytes N` (truncation check) and `shard OFFSET LENGTH` (offsets into DATA)
 * are needed to extract; `kind`, `opaque`, `delete` and the %xattrs section to apply layers
 * (-l: the rules of format/manifest.ts, as init/templates/layer.sh's fallback and
 * format/apply.ts apply them; test/integration/layering.test.ts holds all three to the same
 * fixtures).
 *
 * Why it is faster than busybox cpio (measured 28 syscalls per entry there, 4 here):
 *   - every path is resolved relative to one DEST directory fd, without stat-before-create:
 *     a create that fails with ENOENT (or ENOTDIR) creates the parents and retries, one that
 *     fails with EEXIST replaces what is there and retries (O_EXCL: never writes through an
 *     existing file, symlink or hardlink), so a fresh tree costs one call per create;
 *   - file data is written straight from the decompression buffer;
 *   - regular files cost openat + write + futimens + close, plus fchown unless the owner is
 *     the one a new file gets anyway (root:root in an empty, non-setgid DEST), plus fchmod
 *     only for setuid/setgid/sticky;
 *   - independent shards are decompressed and extracted by parallel threads; the input is
 *     mmap()ed (readahead for the whole file at once, no read() calls).
 * Directory metadata (owner, mode, mtime) is applied once every thread is done, deepest
 * first: creating children would otherwise change the mtimes, and in parallel a shard may
 * create a directory's children after (or before) the directory's own entry was seen.
 *
 * Exit status: 0 success (silent unless -v), 1 failure with exactly one line
 * "mkma-unpack: FILE: reason" on stderr (DEST may be partially filled), 2 usage error;
 * -l: 0 all applied, 1 some skipped (TREE untouched by those), 3 some partly applied.
 * Malformed input never crashes it: every header field is bounds-checked.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; older kernels answer EINVAL, which is fine */
#endif

/* --- format constants (format/manifest.ts, format/newc.ts) ------------------------------ */

#define FOOTER_TAG "MKMA-MANIFEST-LEN"
#define FOOTER_TAG_LEN (sizeof FOOTER_TAG - 1)
#define FOOTER_SIZE (FOOTER_TAG_LEN + 12 + 1)
#define SKIPPABLE_MAGIC 0x184d2a5eu
#define XATTR_SECTION "%xattrs"

#define NEWC_HEADER 110
#define TRAILER_NAME "TRAILER!!!"
/* namesize includes the NUL; longer names could not be created anyway (PATH_MAX) */
#define NAME_LIMIT 4096
/* symlink targets are read whole into memory; Linux refuses longer ones */
#define SYMLINK_LIMIT 4095

/* Decompression buffer per thread: small enough to stay in cache, large enough that most
 * files are written with one write() and big ones in few. Holds any header + name. */
#define BUF_SIZE (256u * 1024u)

static size_t pad4(uint64_t n) { return (size_t)((4 - (n & 3)) & 3); }

/* --- errors: the first one wins and stops every thread ------------------------------------ */

static const char *g_file_label = "";
static atomic_int g_failed;
static pthread_mutex_t g_err_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_err[1024];

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	pthread_mutex_lock(&g_err_lock);
	if (!atomic_load(&g_failed)) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(g_err, sizeof g_err, fmt, ap);
		va_end(ap);
		/* one line: a name with a newline must not split the message */
		for (char *p = g_err; *p; p++)
			if (*p == '\n' || *p == '\r') *p = '?';
		atomic_store(&g_failed, 1);
	}
	pthread_mutex_unlock(&g_err_lock);
	return -1;
}

/* --- global extraction state --------------------------------------------------------------- */

static int g_destfd = -1;
static int g_chown = 1; /* only root can give files away; others keep their own ids (like tar) */
/*
 * DEST was empty and not setgid: every directory below it is created here, without setgid
 * bits until the very end (apply_dirs), so a new file is owned by our euid:egid and a chown
 * to exactly those ids can be left out (most of a root filesystem is root:root).
 */
static int g_fresh;
static uid_t g_euid;
static gid_t g_egid;

static int owner_is_ours(uint32_t uid, uint32_t gid) { return g_fresh && uid == g_euid && gid == g_egid; }

/* --- directories: metadata applied at the end ---------------------------------------------- */

struct dir_rec {
	char *path; /* relative to DEST, "." for DEST itself */
	uint32_t uid, gid, mode, mtime;
	int depth;
};

struct dir_list {
	struct dir_rec *v;
	size_t n, cap;
};

static int dir_add(struct dir_list *l, const char *path, uint32_t uid, uint32_t gid, uint32_t mode, uint32_t mtime)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 256;
		struct dir_rec *v = realloc(l->v, cap * sizeof *v);
		if (!v) return fail("out of memory");
		l->v = v;
		l->cap = cap;
	}
	char *copy = strdup(path);
	if (!copy) return fail("out of memory");
	int depth = 0;
	for (const char *p = path; *p; p++) depth += *p == '/';
	if (strcmp(path, ".") == 0) depth = -1;
	l->v[l->n++] = (struct dir_rec){ copy, uid, gid, mode, mtime, depth };
	return 0;
}

/* --- hardlinks: per shard (the writer keeps each group inside one shard) ------------------- */

struct link_slot {
	uint32_t ino, maj, min;
	char *path; /* NULL: free slot. The first member created: later members link to it. */
};

struct link_table {
	struct link_slot *v;
	size_t cap, used; /* cap: 0 or a power of two */
};

static size_t link_hash(uint32_t ino, uint32_t maj, uint32_t min)
{
	uint64_t h = ino;
	h = h * 0x9E3779B97F4A7C15ull ^ ((uint64_t)maj << 32 | min);
	h *= 0xBF58476D1CE4E5B9ull;
	return (size_t)(h ^ (h >> 31));
}

static struct link_slot *link_find(struct link_table *t, uint32_t ino, uint32_t maj, uint32_t min)
{
	if (!t->cap) return NULL;
	for (size_t i = link_hash(ino, maj, min) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
		struct link_slot *s = &t->v[i];
		if (!s->path) return NULL;
		if (s->ino == ino && s->maj == maj && s->min == min) return s;
	}
}

static int link_add(struct link_table *t, uint32_t ino, uint32_t maj, uint32_t min, const char *path)
{
	if ((t->used + 1) * 2 > t->cap) { /* keep the load under 1/2 */
		size_t cap = t->cap ? t->cap * 2 : 64;
		struct link_slot *v = calloc(cap, sizeof *v);
		if (!v) return fail("out of memory");
		for (size_t i = 0; i < t->cap; i++) {
			struct link_slot *o = &t->v[i];
			if (!o->path) continue;
			size_t j = link_hash(o->ino, o->maj, o->min) & (cap - 1);
			while (v[j].path) j = (j + 1) & (cap - 1);
			v[j] = *o;
		}
		free(t->v);
		t->v = v;
		t->cap = cap;
	}
	char *copy = strdup(path);
	if (!copy) return fail("out of memory");
	size_t i = link_hash(ino, maj, min) & (t->cap - 1);
	while (t->v[i].path) i = (i + 1) & (t->cap - 1);
	t->v[i] = (struct link_slot){ ino, maj, min, copy };
	t->used++;
	return 0;
}

static void link_clear(struct link_table *t)
{
	for (size_t i = 0; i < t->cap; i++) {
		free(t->v[i].path);
		t->v[i].path = NULL;
	}
	t->used = 0;
}

/* --- the input stream: a zstd frame range of the mapped file, or a plain fd -------------- */

struct stream {
	ZSTD_DCtx *dctx; /* NULL: read plain cpio from fd */
	const uint8_t *in;
	size_t in_len, in_pos;
	int frame_done; /* the last zstd call completed a frame (checksum verified) */
	int fd;
	int eof;
	uint8_t *buf;
	size_t start, end; /* unconsumed bytes: buf[start..end) */
	uint64_t offset;   /* cpio bytes consumed, for messages */
	char what[64];     /* "shard 3" or "stdin", for messages */
};

/* Appends bytes after buf[end] (moving the unconsumed rest to the front first).
 * Returns 1 when bytes were added, 0 at the end of the input, -1 on error. */
static int fill(struct stream *s)
{
	if (s->start > 0) {
		size_t n = s->end - s->start;
		if (n) memmove(s->buf, s->buf + s->start, n);
		s->start = 0;
		s->end = n;
	}
	if (s->eof) return 0;
	if (s->end == BUF_SIZE) return 1; /* cannot happen: callers ask for at most BUF_SIZE */
	if (!s->dctx) {
		for (;;) {
			ssize_t r = read(s->fd, s->buf + s->end, BUF_SIZE - s->end);
			if (r > 0) {
				s->end += (size_t)r;
				return 1;
			}
			if (r == 0) {
				s->eof = 1;
				return 0;
			}
			if (errno != EINTR) return fail("%s: read: %s", s->what, strerror(errno));
		}
	}
	ZSTD_outBuffer out = { s->buf + s->end, BUF_SIZE - s->end, 0 };
	for (;;) {
		if (s->in_pos == s->in_len && s->frame_done) { /* no input left, no frame open */
			s->eof = 1;
			return 0;
		}
		ZSTD_inBuffer in = { s->in, s->in_len, s->in_pos };
		size_t r = ZSTD_decompressStream(s->dctx, &out, &in);
		if (ZSTD_isError(r)) return fail("%s: zstd: %s", s->what, ZSTD_getErrorName(r));
		int progressed = in.pos != s->in_pos || out.pos != 0;
		s->in_pos = in.pos;
		s->frame_done = r == 0;
		if (out.pos > 0) {
			s->end += out.pos;
			return 1;
		}
		if (!progressed) return fail("%s: zstd: compressed data ends inside a frame (truncated)", s->what);
	}
}

/* Makes n (<= BUF_SIZE) bytes available at buf[start]: 1, or 0 if the input ended first, -1 on error. */
static int need(struct stream *s, size_t n)
{
	while (s->end - s->start < n) {
		int r = fill(s);
		if (r <= 0) return r;
	}
	return 1;
}

static void consume(struct stream *s, size_t n)
{
	s->start += n;
	s->offset += n;
}

/* Passes over n bytes of data (entry data we do not keep, padding). */
static int skip_data(struct stream *s, uint64_t n)
{
	while (n > 0) {
		if (s->end == s->start) {
			int r = fill(s);
			if (r < 0) return -1;
			if (r == 0) return fail("%s: cpio data ends inside an entry (truncated)", s->what);
		}
		size_t take = s->end - s->start;
		if (take > n) take = (size_t)n;
		consume(s, take);
		n -= take;
	}
	return 0;
}

/* --- filesystem operations ----------------------------------------------------------------- */

/* Removes path, whatever it is (a directory with its contents). */
static int remove_tree_at(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0) return 0;
	if (errno != EISDIR && errno != EPERM) return -1;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) return -1;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -1;
	}
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (errno = 0, e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
		rc = remove_tree_at(fd, e->d_name);
	}
	if (rc == 0 && errno) rc = -1;
	int saved = errno;
	closedir(d);
	if (rc) {
		errno = saved;
		return -1;
	}
	return unlinkat(dirfd, name, AT_REMOVEDIR);
}

/* Makes dir (relative to DEST) a directory: creates it (0700: a placeholder until the
 * directory's own entry sets the real metadata at the end), keeps it if it is one, replaces
 * anything else (not a fresh tree). Never goes through a symlink: that one is replaced. */
static int ensure_dir(const char *dir)
{
	for (int tries = 0; tries < 3; tries++) {
		if (mkdirat(g_destfd, dir, 0700) == 0) return 0;
		if (errno != EEXIST) return -1;
		struct stat st;
		if (fstatat(g_destfd, dir, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) return 0;
		if (remove_tree_at(g_destfd, dir) < 0 && errno != ENOENT) return -1;
	}
	errno = EEXIST;
	return -1;
}

/* Creates the missing parents of path (after a create failed with ENOENT or ENOTDIR). */
static int make_parents(const char *path)
{
	char tmp[NAME_LIMIT];
	size_t len = strlen(path);
	if (len >= sizeof tmp) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(tmp, path, len + 1);
	for (char *p = tmp; (p = strchr(p, '/')) != NULL; p++) {
		*p = '\0';
		if (ensure_dir(tmp) < 0) return -1;
		*p = '/';
	}
	return 0;
}

enum create_kind { C_FILE, C_DIR, C_SYMLINK, C_NODE, C_LINK };
static const char *const create_op[] = { "open", "mkdir", "symlink", "mknod", "link" };

/*
 * Creates path (relative to DEST) optimistically: one syscall when the parent exists and
 * the name is free (always, in a fresh tree in archive order). ENOENT: create the parents,
 * retry. EEXIST: replace what is there (except a directory where a directory is wanted:
 * that one is kept), retry. Returns the fd for C_FILE, 0 for the others, 1 for C_DIR when
 * the directory already existed, -1 on error (recorded).
 */
static int create_at(enum create_kind kind, const char *path, mode_t mode, dev_t rdev, const char *target)
{
	for (int tries = 0;; tries++) {
		int r;
		switch (kind) {
		case C_FILE:
			r = openat(g_destfd, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
			break;
		case C_DIR: r = mkdirat(g_destfd, path, mode); break;
		case C_SYMLINK: r = symlinkat(target, g_destfd, path); break;
		case C_NODE: r = mknodat(g_destfd, path, mode, rdev); break;
		default: r = linkat(g_destfd, target, g_destfd, path, 0); break;
		}
		if (r >= 0) return r;
		int err = errno;
		if (tries < 3 && (err == ENOENT || err == ENOTDIR) && strchr(path, '/')) {
			/* a parent is missing (shards run in parallel; hardlink groups are stored at
			 * their first member's place), or is not a directory (not a fresh tree) */
			if (make_parents(path) == 0) continue;
			err = errno;
		} else if (tries < 3 && err == EEXIST) {
			if (kind == C_DIR) {
				struct stat st;
				if (fstatat(g_destfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) return 1;
			}
			/* Not a fresh tree (or a duplicate name): the later entry wins, like cpio -u. */
			if (remove_tree_at(g_destfd, path) == 0 || errno == ENOENT) continue;
			err = errno;
		}
		return fail("%s: %s: %s", path, create_op[kind], strerror(err));
	}
}

/* For a node created by this process in this run (see g_fresh). */
static int set_owner_fd(int fd, const char *path, uint32_t uid, uint32_t gid)
{
	if (g_chown && !owner_is_ours(uid, gid) && fchown(fd, uid, gid) < 0) return fail("%s: chown: %s", path, strerror(errno));
	return 0;
}

/* For a node created by this process in this run (see g_fresh). */
static int set_owner_at(const char *path, uint32_t uid, uint32_t gid)
{
	if (g_chown && !owner_is_ours(uid, gid) && fchownat(g_destfd, path, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
		return fail("%s: chown: %s", path, strerror(errno));
	return 0;
}

static int set_mtime_at(const char *path, uint32_t mtime)
{
	struct timespec ts[2] = { { (time_t)mtime, 0 }, { (time_t)mtime, 0 } };
	if (utimensat(g_destfd, path, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return fail("%s: utimensat: %s", path, strerror(errno));
	return 0;
}

/* --- one worker: shards, one after another -------------------------------------------------- */

struct worker {
	ZSTD_DCtx *dctx;
	uint8_t *buf;
	struct link_table links;
	struct dir_list dirs;
	uint64_t entries, file_bytes, cpio_bytes;
	pthread_t thread;
	char name[NAME_LIMIT];          /* the current entry's name, copied out of the buffer */
	char target[SYMLINK_LIMIT + 1]; /* the current symlink's target */
};

struct header {
	uint32_t ino, mode, uid, gid, nlink, mtime, size, devmaj, devmin, rdevmaj, rdevmin, namesize;
};

static int parse_hex8(const uint8_t *p, uint32_t *out)
{
	uint32_t v = 0;
	for (int i = 0; i < 8; i++) {
		unsigned c = p[i], d;
		if (c >= '0' && c <= '9') d = c - '0';
		else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
		else return -1;
		v = v << 4 | d;
	}
	*out = v;
	return 0;
}

/* "./a/b" → "a/b"; "." and "./" → "." (DEST itself). NULL when the name could leave DEST:
 * absolute, or with "..", "." or empty components. */
/* A relative path that stays inside the tree: not empty, no leading or trailing "/", no
 * empty, "." or ".." component (layer.sh: safe_rel). */
static int safe_rel(const char *p)
{
	if (!*p) return 0;
	for (const char *c = p;;) {
		const char *slash = strchr(c, '/');
		size_t len = slash ? (size_t)(slash - c) : strlen(c);
		if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.')) return 0;
		if (!slash) return 1;
		c = slash + 1;
	}
}

static const char *clean_name(char *name)
{
	if (name[0] == '.' && name[1] == '/') name += 2;
	if (name[0] == '\0' || strcmp(name, ".") == 0) return ".";
	return safe_rel(name) ? name : NULL;
}

/* Writes the entry's data (size bytes, then padding) from the stream into fd. */
static int copy_data(struct worker *w, struct stream *s, int fd, const char *path, uint64_t size)
{
	uint64_t left = size;
	while (left > 0) {
		if (s->end == s->start) {
			int r = fill(s);
			if (r < 0) return -1;
			if (r == 0) return fail("%s: cpio data ends inside %s (truncated)", s->what, path);
		}
		size_t n = s->end - s->start;
		if (n > left) n = (size_t)left;
		const uint8_t *p = s->buf + s->start;
		size_t todo = n;
		while (todo > 0) {
			ssize_t r = write(fd, p, todo);
			if (r < 0) {
				if (errno == EINTR) continue;
				return fail("%s: write: %s", path, strerror(errno));
			}
			p += r;
			todo -= (size_t)r;
		}
		consume(s, n);
		left -= n;
	}
	w->file_bytes += size;
	return skip_data(s, pad4(size));
}

static int extract_file(struct worker *w, struct stream *s, const char *path, const struct header *h)
{
	int fd = -1;
	if (h->nlink > 1) {
		struct link_slot *first = link_find(&w->links, h->ino, h->devmaj, h->devmin);
		if (first && h->size == 0) {
			/* a further member of a group: a link to the first one (which gets the data
			 * when it comes, GNU convention, or already has it, data-first) */
			if (create_at(C_LINK, path, 0, 0, first->path) < 0) return -1;
			return 0;
		}
		if (first) {
			/* the member carrying the data, after the others: write into their inode */
			if (create_at(C_LINK, path, 0, 0, first->path) < 0) return -1;
			fd = openat(g_destfd, path, O_WRONLY | O_TRUNC | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0) return fail("%s: open: %s", path, strerror(errno));
		} else if (link_add(&w->links, h->ino, h->devmaj, h->devmin, path) < 0) {
			return -1;
		}
	}
	if (fd < 0) {
		fd = create_at(C_FILE, path, h->mode & 0777, 0, NULL);
		if (fd < 0) return -1;
	}
	int rc = copy_data(w, s, fd, path, h->size);
	if (rc == 0) rc = set_owner_fd(fd, path, h->uid, h->gid);
	/* created with the permission bits only (and chown clears setuid/setgid): the special
	 * bits, and only they, need a chmod after the chown */
	if (rc == 0 && (h->mode & 07000) && fchmod(fd, h->mode & 07777) < 0) rc = fail("%s: chmod: %s", path, strerror(errno));
	if (rc == 0) {
		struct timespec ts[2] = { { (time_t)h->mtime, 0 }, { (time_t)h->mtime, 0 } };
		if (futimens(fd, ts) < 0) rc = fail("%s: utimens: %s", path, strerror(errno));
	}
	if (close(fd) < 0 && rc == 0) rc = fail("%s: close: %s", path, strerror(errno));
	return rc;
}

/* One entry whose header starts at buf[start]. 1: an entry, 0: TRAILER!!!, -1: error. */
static int extract_entry(struct worker *w, struct stream *s)
{
	const uint8_t *p = s->buf + s->start;
	if (memcmp(p, "07070", 5) != 0 || (p[5] != '1' && p[5] != '2'))
		return fail("%s: not a cpio newc header at offset %llu", s->what, (unsigned long long)s->offset);
	uint32_t f[12]; /* the 13th field, "check", is not used by newc */
	for (int i = 0; i < 12; i++)
		if (parse_hex8(p + 6 + 8 * i, &f[i]) < 0)
			return fail("%s: damaged cpio header at offset %llu", s->what, (unsigned long long)s->offset);
	struct header h = { .ino = f[0], .mode = f[1], .uid = f[2], .gid = f[3], .nlink = f[4], .mtime = f[5],
			    .size = f[6], .devmaj = f[7], .devmin = f[8], .rdevmaj = f[9], .rdevmin = f[10], .namesize = f[11] };
	if (h.namesize < 2 || h.namesize > NAME_LIMIT)
		return fail("%s: bad name size %u in the cpio header at offset %llu", s->what, h.namesize, (unsigned long long)s->offset);
	size_t head = NEWC_HEADER + h.namesize;
	head += pad4(head);
	int r = need(s, head);
	if (r < 0) return -1;
	if (r == 0) return fail("%s: cpio data ends inside a header (truncated)", s->what);
	p = s->buf + s->start;
	const char *raw = (const char *)p + NEWC_HEADER;
	if (raw[h.namesize - 1] != '\0' || memchr(raw, '\0', h.namesize - 1))
		return fail("%s: damaged name in the cpio header at offset %llu", s->what, (unsigned long long)s->offset);
	memcpy(w->name, raw, h.namesize);
	consume(s, head);
	if (strcmp(w->name, TRAILER_NAME) == 0) return 0;

	w->entries++;
	const char *path = clean_name(w->name);
	if (!path) return fail("unsafe path in the archive: \"%s\"", w->name);
	uint32_t type = h.mode & S_IFMT;
	/* "." is DEST itself: only its metadata can come from the archive */
	if (type != S_IFDIR && strcmp(path, ".") == 0) return fail("the archive's root entry \".\" is not a directory");

	if (type == S_IFREG) return extract_file(w, s, path, &h) < 0 ? -1 : 1;

	if (type == S_IFLNK) {
		if (h.size == 0 || h.size > SYMLINK_LIMIT) return fail("%s: bad symlink target length %u", path, h.size);
		r = need(s, h.size + pad4(h.size));
		if (r < 0) return -1;
		if (r == 0) return fail("%s: cpio data ends inside %s (truncated)", s->what, path);
		memcpy(w->target, s->buf + s->start, h.size);
		w->target[h.size] = '\0';
		if (memchr(w->target, '\0', h.size)) return fail("%s: symlink target contains a NUL byte", path);
		consume(s, h.size + pad4(h.size));
		if (create_at(C_SYMLINK, path, 0, 0, w->target) < 0) return -1;
		if (set_owner_at(path, h.uid, h.gid) < 0) return -1;
		return set_mtime_at(path, h.mtime) < 0 ? -1 : 1;
	}

	/* no data is expected below; whatever there is, is skipped */
	if (skip_data(s, (uint64_t)h.size + pad4(h.size)) < 0) return -1;

	if (type == S_IFDIR) {
		if (strcmp(path, ".") != 0 && create_at(C_DIR, path, h.mode & 0777, 0, NULL) < 0) return -1;
		return dir_add(&w->dirs, path, h.uid, h.gid, h.mode, h.mtime) < 0 ? -1 : 1;
	}
	if (type == S_IFCHR || type == S_IFBLK || type == S_IFIFO || type == S_IFSOCK) {
		if (create_at(C_NODE, path, type | (h.mode & 0777), makedev(h.rdevmaj, h.rdevmin), NULL) < 0) return -1;
		if (set_owner_at(path, h.uid, h.gid) < 0) return -1;
		if ((h.mode & 07000) && fchmodat(g_destfd, path, h.mode & 07777, 0) < 0)
			return fail("%s: chmod: %s", path, strerror(errno));
		return set_mtime_at(path, h.mtime) < 0 ? -1 : 1;
	}
	return fail("%s: unsupported entry type 0%o", path, type >> 12);
}

/* All entries of one stream. A shard ends on an entry boundary; the last one (is_last) must
 * end with TRAILER!!!, which no other shard may hold. */
static int extract_stream(struct worker *w, struct stream *s, int is_last)
{
	for (;;) {
		if (atomic_load_explicit(&g_failed, memory_order_relaxed)) return -1;
		int r = need(s, NEWC_HEADER);
		if (r < 0) return -1;
		if (r == 0) {
			if (s->end != s->start) return fail("%s: cpio data ends inside a header (truncated)", s->what);
			if (is_last) return fail("%s: the archive ends without TRAILER!!! (truncated)", s->what);
			break;
		}
		r = extract_entry(w, s);
		if (r < 0) return -1;
		if (r == 0) {
			if (!is_last) return fail("%s: TRAILER!!! before the last shard (damaged)", s->what);
			/* Read (and for zstd: checksum) the rest; cpio pads archives with zeros. */
			do {
				s->start = s->end = 0;
				r = fill(s);
			} while (r > 0);
			if (r < 0) return -1;
			break;
		}
	}
	w->cpio_bytes += s->offset;
	return 0;
}

/* --- the image file --------------------------------------------------------------------- */

struct shard {
	uint64_t offset, length;
};

static const uint8_t *g_map;
static struct shard *g_shards;
static size_t g_nshards;
static atomic_size_t g_next_shard;

static int worker_setup(struct worker *w)
{
	w->buf = malloc(BUF_SIZE);
	if (!w->buf) return fail("out of memory");
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	w->dctx = ZSTD_createDCtx();
	if (!w->dctx) {
		fail("out of memory (zstd)");
		return NULL;
	}
	for (;;) {
		if (atomic_load(&g_failed)) break;
		size_t i = atomic_fetch_add(&g_next_shard, 1);
		if (i >= g_nshards) break;
		const struct shard *sh = &g_shards[i];
		/* fault the shard's pages in with one call (readahead was started for the file) */
		madvise((void *)((uintptr_t)(g_map + sh->offset) & ~(uintptr_t)4095),
			(size_t)sh->length + ((uintptr_t)(g_map + sh->offset) & 4095), MADV_POPULATE_READ);
		ZSTD_DCtx_reset(w->dctx, ZSTD_reset_session_only);
		struct stream s = { .dctx = w->dctx, .in = g_map + sh->offset, .in_len = (size_t)sh->length, .buf = w->buf };
		if (g_nshards > 1) snprintf(s.what, sizeof s.what, "shard %zu of %zu", i + 1, g_nshards);
		else snprintf(s.what, sizeof s.what, "data");
		link_clear(&w->links);
		if (extract_stream(w, &s, i == g_nshards - 1) < 0) break;
	}
	return NULL;
}

/* Parses an unsigned decimal number of at most 19 digits ending at *end. */
static int parse_u64(const char *p, const char *limit, uint64_t *out, const char **end)
{
	uint64_t v = 0;
	const char *q = p;
	while (q < limit && *q >= '0' && *q <= '9' && q - p < 19) v = v * 10 + (uint64_t)(*q++ - '0');
	if (q == p) return -1;
	*out = v;
	*end = q;
	return 0;
}

static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* What read_manifest found besides the shard table. */
static const char *g_body, *g_body_end; /* the manifest body, in the mapping */
static const char *g_xattrs;            /* the %xattrs section's content, or NULL */
static char g_kind[16];
static uint64_t g_entries, g_unpacked;

/* Reads the manifest at the end of the mapped file: the shard table, and the size check. */
static int read_manifest(const uint8_t *map, uint64_t size)
{
	if (size < FOOTER_SIZE + 8) return fail("too small to be an mkma image (%llu bytes)", (unsigned long long)size);
	const char *foot = (const char *)map + size - FOOTER_SIZE;
	if (memcmp(foot, FOOTER_TAG, FOOTER_TAG_LEN) != 0 || foot[FOOTER_SIZE - 1] != '\n')
		return fail("no manifest at its end (truncated, or not an mkma image)");
	const char *num = foot + FOOTER_TAG_LEN, *num_end = foot + FOOTER_SIZE - 1, *q;
	while (num < num_end && *num == ' ') num++;
	uint64_t body_len;
	if (parse_u64(num, num_end, &body_len, &q) < 0 || q != num_end || body_len == 0 || body_len > size - FOOTER_SIZE - 8)
		return fail("damaged manifest footer");
	uint64_t frame_start = size - FOOTER_SIZE - body_len - 8;
	if (le32(map + frame_start) != SKIPPABLE_MAGIC || le32(map + frame_start + 4) != body_len + FOOTER_SIZE)
		return fail("manifest frame header is damaged");

	const char *p = (const char *)map + frame_start + 8, *body_end = p + body_len;
	g_body = p;
	g_body_end = body_end;
	g_xattrs = NULL;
	g_kind[0] = '\0';
	g_entries = g_unpacked = 0;
	uint64_t data_bytes = 0;
	int have_data_bytes = 0, first = 1;
	size_t cap = 0;
	while (p < body_end) {
		const char *nl = memchr(p, '\n', (size_t)(body_end - p));
		const char *eol = nl ? nl : body_end;
		size_t len = (size_t)(eol - p);
		if (first) {
			if (len != 15 || memcmp(p, "mkma-manifest 1", 15) != 0) return fail("unsupported or damaged manifest header");
			first = 0;
		} else if (len == sizeof XATTR_SECTION - 1 && memcmp(p, XATTR_SECTION, len) == 0) {
			g_xattrs = eol < body_end ? eol + 1 : body_end;
			break;
		} else if (len > 5 && memcmp(p, "kind ", 5) == 0) {
			size_t n = len - 5 < sizeof g_kind - 1 ? len - 5 : sizeof g_kind - 1;
			memcpy(g_kind, p + 5, n);
			g_kind[n] = '\0';
		} else if (len > 8 && memcmp(p, "entries ", 8) == 0) {
			if (parse_u64(p + 8, eol, &g_entries, &q) < 0 || q != eol) return fail("damaged manifest (entries)");
		} else if (len > 15 && memcmp(p, "unpacked_bytes ", 15) == 0) {
			if (parse_u64(p + 15, eol, &g_unpacked, &q) < 0 || q != eol) return fail("damaged manifest (unpacked_bytes)");
		} else if (len > 11 && memcmp(p, "data_bytes ", 11) == 0) {
			if (parse_u64(p + 11, eol, &data_bytes, &q) < 0 || q != eol) return fail("damaged manifest (data_bytes)");
			have_data_bytes = 1;
		} else if (len > 6 && memcmp(p, "shard ", 6) == 0) {
			struct shard sh;
			if (parse_u64(p + 6, eol, &sh.offset, &q) < 0 || q >= eol || *q != ' ' ||
			    parse_u64(q + 1, eol, &sh.length, &q) < 0 || q != eol)
				return fail("damaged manifest (shard line)");
			if (g_nshards == cap) {
				cap = cap ? cap * 2 : 64;
				struct shard *v = realloc(g_shards, cap * sizeof *v);
				if (!v) return fail("out of memory");
				g_shards = v;
			}
			g_shards[g_nshards++] = sh;
		}
		p = eol + 1;
	}
	if (first || !have_data_bytes) return fail("manifest lacks data_bytes (damaged)");
	if (data_bytes != frame_start)
		return fail("data is %llu bytes but the manifest says %llu (truncated or damaged)",
			    (unsigned long long)frame_start, (unsigned long long)data_bytes);
	if (data_bytes == 0) return fail("the image holds no data (damaged)");
	if (g_nshards == 0) { /* no shard table: one stream of all frames */
		g_shards = malloc(sizeof *g_shards);
		if (!g_shards) return fail("out of memory");
		g_shards[0] = (struct shard){ 0, data_bytes };
		g_nshards = 1;
	}
	/* the shards must tile DATA exactly */
	uint64_t pos = 0;
	for (size_t i = 0; i < g_nshards; i++) {
		if (g_shards[i].offset != pos || g_shards[i].length == 0 || g_shards[i].length > data_bytes - pos)
			return fail("damaged manifest (shard %zu does not follow the previous one)", i + 1);
		pos += g_shards[i].length;
	}
	if (pos != data_bytes) return fail("damaged manifest (shards do not cover the data)");
	return 0;
}

/* --- directories, at the end ------------------------------------------------------------ */

static int by_depth_desc(const void *a, const void *b)
{
	const struct dir_rec *x = a, *y = b;
	return (x->depth < y->depth) - (x->depth > y->depth);
}

static int apply_dirs(struct worker *ws, int nw)
{
	size_t total = 0;
	for (int i = 0; i < nw; i++) total += ws[i].dirs.n;
	struct dir_rec *all = malloc((total ? total : 1) * sizeof *all);
	if (!all) return fail("out of memory");
	size_t k = 0;
	for (int i = 0; i < nw; i++)
		for (size_t j = 0; j < ws[i].dirs.n; j++) all[k++] = ws[i].dirs.v[j];
	qsort(all, total, sizeof *all, by_depth_desc);
	int rc = 0;
	for (size_t i = 0; i < total && rc == 0; i++) {
		const struct dir_rec *d = &all[i];
		/* "." is DEST, which this process did not create */
		if (g_chown && (strcmp(d->path, ".") == 0 || !owner_is_ours(d->uid, d->gid)) &&
		    fchownat(g_destfd, d->path, d->uid, d->gid, AT_SYMLINK_NOFOLLOW) < 0)
			rc = fail("%s: chown: %s", d->path, strerror(errno));
		/* always: a directory may be a placeholder, or have inherited a setgid bit */
		if (rc == 0 && fchmodat(g_destfd, d->path, d->mode & 07777, 0) < 0)
			rc = fail("%s: chmod: %s", d->path, strerror(errno));
		if (rc == 0) rc = set_mtime_at(d->path, d->mtime);
	}
	free(all);
	return rc;
}

/* --- main ------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: mkma-unpack [-v] [-X] [-j N] FILE DEST\n"
		"                                           extract an mkma image (shards in parallel)\n"
		"       mkma-unpack [-v] - DEST             extract a plain cpio newc stream from stdin\n"
		"       mkma-unpack -l TREE STAGE LAYER...  apply layers to TREE in order, each all or\n"
		"                                           nothing; one line per layer: ok NAME ENTRIES\n"
		"                                           REMOVED, skip NAME REASON, partial NAME REASON\n"
		"       mkma-unpack -i FILE...              one line per image: ok KIND ENTRIES UNPACKED\n"
		"                                           DATA_BYTES, or bad REASON\n"
		"  -j N  threads (default: online CPUs)   -v  print a summary\n"
		"  -X    also restore the image's %%xattrs (failures: \"warn NAME text\" on stdout)\n");
}

/* True when the directory has no entries besides "." and "..". */
static int dir_is_empty(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) return 0;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return 0;
	}
	int empty = 1;
	struct dirent *e;
	while (empty && (e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) empty = 0;
	closedir(d);
	return empty;
}

/* CPUs this process may run on (no /sys needed, unlike sysconf in a bare initramfs) */
static long online_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? n : 1;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Maps FILE and reads its manifest (errors through fail()). */
static int map_image(const char *file, uint64_t *size_out)
{
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		int e = errno;
		if (fd >= 0) close(fd);
		return fail("%s", strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return fail("not a regular file");
	}
	uint64_t size = (uint64_t)st.st_size;
	if (size < FOOTER_SIZE + 8) {
		close(fd);
		return fail("too small to be an mkma image (%llu bytes)", (unsigned long long)size);
	}
	g_map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (g_map == MAP_FAILED) {
		g_map = NULL;
		return fail("mmap: %s", strerror(errno));
	}
	/* start reading the whole file now (storage I/O overlaps decompression) */
	madvise((void *)g_map, (size_t)size, MADV_WILLNEED);
	*size_out = size;
	return read_manifest(g_map, size);
}

static void unmap_image(uint64_t size)
{
	if (g_map) munmap((void *)g_map, (size_t)size);
	g_map = NULL;
	free(g_shards);
	g_shards = NULL;
	g_nshards = 0;
	atomic_store(&g_next_shard, 0);
}

/* Extracts the mapped image's shards into g_destfd with up to `jobs` threads, then applies
 * the directories' metadata. Adds the counts to *entries etc. */
static int extract_image(long jobs, uint64_t *entries, uint64_t *bytes, uint64_t *cpio, int *threads)
{
	if (jobs == 0) jobs = online_cpus();
	int nw = (size_t)jobs < g_nshards ? (int)jobs : (int)g_nshards;
	/* one image per process (-l extracts each layer in a child of its own): the workers'
	 * buffers, zstd contexts and tables go with the process */
	struct worker *ws = calloc((size_t)nw, sizeof *ws);
	if (!ws) return fail("out of memory");
	int started = 0;
	for (int i = 0; i < nw; i++)
		if (worker_setup(&ws[i]) < 0) break;
	/* the main thread is worker 0 */
	for (int i = 1; i < nw && !atomic_load(&g_failed); i++) {
		int e = pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]);
		if (e) {
			fail("cannot start a thread: %s", strerror(e));
			break;
		}
		started = i;
	}
	if (!atomic_load(&g_failed)) worker_main(&ws[0]);
	for (int i = 1; i <= started; i++) pthread_join(ws[i].thread, NULL);
	if (!atomic_load(&g_failed)) apply_dirs(ws, nw);
	for (int i = 0; i < nw; i++) {
		*entries += ws[i].entries;
		*bytes += ws[i].file_bytes;
		*cpio += ws[i].cpio_bytes;
	}
	*threads = nw;
	return atomic_load(&g_failed) ? -1 : 0;
}

/* --- layers (format/manifest.ts, "Applying a layer"; shell: init/templates/layer.sh) ----- */

/* The byte of three octal digits "ooo" (the first 0-3) at p, or -1. */
static int octal3(const char *p)
{
	if (p[0] < '0' || p[0] > '3' || p[1] < '0' || p[1] > '7' || p[2] < '0' || p[2] > '7') return -1;
	return (p[0] - '0') * 64 + (p[1] - '0') * 8 + (p[2] - '0');
}

/* An `opaque`/`delete` path as written by escapePath: `\\` is a backslash, `\0ooo` a byte. */
static int decode_path(const char *p, size_t len, char *out, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\\') {
			if (i + 1 < len && p[i + 1] == '\\') {
				i++;
			} else if (i + 4 < len && p[i + 1] == '0' && octal3(p + i + 2) >= 0) {
				c = (unsigned char)octal3(p + i + 2);
				i += 4;
			} else {
				return -1;
			}
		}
		if (c == '\0' || n + 1 >= cap) return -1;
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return 0;
}

/* Calls fn for each opaque/delete path of the manifest, decoded, in order; stops at the
 * first non-zero return. */
static int each_removal(int (*fn)(const char *path, void *arg), void *arg)
{
	char path[NAME_LIMIT];
	const char *end = g_xattrs ? g_xattrs : g_body_end;
	for (const char *p = g_body; p < end;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *eol = nl ? nl : end;
		size_t len = (size_t)(eol - p);
		size_t skip = len > 7 && memcmp(p, "opaque ", 7) == 0 ? 7 : len > 7 && memcmp(p, "delete ", 7) == 0 ? 7 : 0;
		if (skip) {
			if (decode_path(p + skip, len - skip, path, sizeof path) < 0)
				return fail("damaged manifest (bad path escape in \"%.*s\")", (int)(len > 200 ? 200 : len), p);
			int r = fn(path, arg);
			if (r) return r;
		}
		p = eol + 1;
	}
	return 0;
}

static int refuse_unsafe(const char *path, void *arg)
{
	(void)arg;
	return safe_rel(path) ? 0 : fail("unsafe path in manifest: %s", path);
}

/* True when every parent of rel under treefd is a real directory: a path under a symlink
 * does not exist in the layer's view, and following it would delete something else. */
static int parents_are_dirs(int treefd, const char *rel)
{
	char tmp[NAME_LIMIT];
	size_t len = strlen(rel);
	if (len >= sizeof tmp) return 0;
	memcpy(tmp, rel, len + 1);
	for (char *p = tmp; (p = strchr(p, '/')) != NULL; p++) {
		struct stat st;
		*p = '\0';
		if (fstatat(treefd, tmp, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)) return 0;
		*p = '/';
	}
	return 1;
}

struct removal {
	int treefd;
	uint64_t removed;
};

static int remove_path(const char *path, void *arg)
{
	struct removal *r = arg;
	struct stat st;
	if (!parents_are_dirs(r->treefd, path) || fstatat(r->treefd, path, &st, AT_SYMLINK_NOFOLLOW) < 0) return 0;
	if (remove_tree_at(r->treefd, path) < 0 && errno != ENOENT) return fail("%s: cannot remove: %s", path, strerror(errno));
	r->removed++;
	return 0;
}

/* Rule 3: stage's entries into tree, top-down. A directory that is a directory on both
 * sides is descended into and then gets the staged owner, mode and times (chown first: it
 * clears setgid); anything else replaces what the tree has, by rename (hardlinks stay).
 * The staged directories are removed as they are emptied, so the stage ends empty.
 * getdents64 directly: entries leave the directory while it is read, and the stdio-like
 * DIR layer would add a dup and an fcntl per directory (thousands in a layer). */
struct linux_dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

static int merge_dir(int sfd, int tfd, const char *where)
{
	char dents[8192];
	char sub[NAME_LIMIT];
	for (;;) {
		long n = syscall(SYS_getdents64, sfd, dents, sizeof dents);
		if (n < 0) return fail("%s: cannot read the staged directory: %s", where, strerror(errno));
		if (n == 0) return 0;
		for (long off = 0; off < n;) {
			struct linux_dirent64 *e = (struct linux_dirent64 *)(dents + off);
			off += e->d_reclen;
			const char *name = e->d_name;
			if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
			/* the path, for messages and the recursion (cheap next to the syscalls) */
			snprintf(sub, sizeof sub, "%s%s%s", where, *where ? "/" : "", name);
			struct stat ts;
			int have = fstatat(tfd, name, &ts, AT_SYMLINK_NOFOLLOW) == 0;
			int sdir = e->d_type == DT_DIR;
			if (e->d_type == DT_UNKNOWN) {
				struct stat ss;
				if (fstatat(sfd, name, &ss, AT_SYMLINK_NOFOLLOW) < 0) return fail("%s: stat (staged): %s", sub, strerror(errno));
				sdir = S_ISDIR(ss.st_mode);
			}
			if (sdir && have && S_ISDIR(ts.st_mode)) {
				int s2 = openat(sfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
				int t2 = s2 < 0 ? -1 : openat(tfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
				int rc = s2 < 0 || t2 < 0 ? fail("%s: open: %s", sub, strerror(errno)) : merge_dir(s2, t2, sub);
				struct stat ss;
				if (rc == 0 && fstat(s2, &ss) < 0) rc = fail("%s: stat (staged): %s", sub, strerror(errno));
				if (rc == 0 && g_chown && (ss.st_uid != ts.st_uid || ss.st_gid != ts.st_gid) && fchown(t2, ss.st_uid, ss.st_gid) < 0)
					rc = fail("%s: chown: %s", sub, strerror(errno));
				/* after a chown (which may clear setgid); not when nothing would change (most
				 * directories of a layer are parents of its changes, as they were) */
				if (rc == 0 && (((ss.st_mode ^ ts.st_mode) & 07777) || (ts.st_mode & 06000)) && fchmod(t2, ss.st_mode & 07777) < 0)
					rc = fail("%s: chmod: %s", sub, strerror(errno));
				struct timespec times[2] = { ss.st_atim, ss.st_mtim };
				if (rc == 0 && futimens(t2, times) < 0) rc = fail("%s: utimens: %s", sub, strerror(errno));
				if (s2 >= 0) close(s2);
				if (t2 >= 0) close(t2);
				if (rc == 0 && unlinkat(sfd, name, AT_REMOVEDIR) < 0) rc = fail("%s: rmdir (staged): %s", sub, strerror(errno));
				if (rc) return rc;
			} else {
				if (have && remove_tree_at(tfd, name) < 0 && errno != ENOENT)
					return fail("%s: cannot replace: %s", sub, strerror(errno));
				if (renameat(sfd, name, tfd, name) < 0) return fail("%s: rename: %s", sub, strerror(errno));
			}
		}
	}
}

/* --- xattrs: the %xattrs section, `getfattr -d` format (what `setfattr --restore` reads) --- */

/* getfattr's path spelling: \ooo is a byte; any other backslash is itself. */
static int decode_getfattr_path(const char *p, size_t len, char *out, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\\' && i + 3 < len && octal3(p + i + 1) >= 0) {
			c = (unsigned char)octal3(p + i + 1);
			i += 3;
		}
		if (c == '\0' || n + 1 >= cap) return -1;
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return 0;
}

static int b64(unsigned char c)
{
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	if (c == '+') return 62;
	if (c == '/') return 63;
	return -1;
}

/* A value as setfattr reads it: 0x hex, 0s base64, "text" (\ooo escapes), or plain text.
 * Returns the decoded length, -1 when malformed. */
static long decode_value(const char *p, size_t len, unsigned char *out, size_t cap)
{
	size_t n = 0;
	if (len >= 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		if ((len - 2) % 2) return -1;
		for (size_t i = 2; i < len; i += 2) {
			int v = 0;
			for (int k = 0; k < 2; k++) {
				unsigned char c = (unsigned char)p[i + k];
				int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
				if (d < 0) return -1;
				v = v * 16 + d;
			}
			if (n >= cap) return -1;
			out[n++] = (unsigned char)v;
		}
		return (long)n;
	}
	if (len >= 2 && p[0] == '0' && (p[1] == 's' || p[1] == 'S')) {
		uint32_t acc = 0;
		int bits = 0;
		for (size_t i = 2; i < len && p[i] != '='; i++) {
			int d = b64((unsigned char)p[i]);
			if (d < 0) return -1;
			acc = acc << 6 | (uint32_t)d;
			bits += 6;
			if (bits >= 8) {
				bits -= 8;
				if (n >= cap) return -1;
				out[n++] = (unsigned char)(acc >> bits);
			}
		}
		return (long)n;
	}
	if (len >= 2 && p[0] == '"' && p[len - 1] == '"') {
		char tmp[NAME_LIMIT];
		if (len - 2 >= sizeof tmp) return -1;
		/* an empty value is allowed here, decode_getfattr_path is not */
		if (len == 2) return 0;
		if (decode_getfattr_path(p + 1, len - 2, tmp, sizeof tmp) < 0) return -1;
		n = strlen(tmp);
		if (n > cap) return -1;
		memcpy(out, tmp, n);
		return (long)n;
	}
	if (len > cap) return -1;
	memcpy(out, p, len);
	return (long)len;
}

/* Rule 4: sets every attribute of the section on TREE/path (not following a final symlink,
 * like `setfattr -h --restore` run in TREE). A failure is a warning, printed as
 * "warn NAME text", and the rest is still restored. */
static void restore_xattrs(const char *tree, const char *label)
{
	if (!g_xattrs) return;
	static unsigned char value[65536]; /* XATTR_SIZE_MAX */
	char rel[NAME_LIMIT], full[NAME_LIMIT + PATH_MAX], name[256];
	int have_file = 0, warned = 0;
	for (const char *p = g_xattrs; p < g_body_end;) {
		const char *nl = memchr(p, '\n', (size_t)(g_body_end - p));
		const char *eol = nl ? nl : g_body_end;
		size_t len = (size_t)(eol - p);
		if (len > 8 && memcmp(p, "# file: ", 8) == 0) {
			have_file = decode_getfattr_path(p + 8, len - 8, rel, sizeof rel) == 0 && safe_rel(rel);
			if (have_file) snprintf(full, sizeof full, "%s/%s", tree, rel);
			else if (!warned++) printf("warn %s bad or unsafe path in the %%xattrs section: %.*s\n", label, (int)(len > 200 ? 200 : len), p);
		} else if (len && p[0] != '#' && have_file) {
			const char *eq = memchr(p, '=', len);
			size_t nlen = eq ? (size_t)(eq - p) : len;
			long vlen = 0;
			if (nlen == 0 || nlen >= sizeof name) {
				vlen = -1;
			} else {
				memcpy(name, p, nlen);
				name[nlen] = '\0';
				if (eq) vlen = decode_value(eq + 1, len - nlen - 1, value, sizeof value);
			}
			if (vlen < 0) {
				if (!warned++) printf("warn %s some extended attributes could not be restored: malformed line %.*s\n", label, (int)(len > 200 ? 200 : len), p);
			} else if (lsetxattr(full, name, value, (size_t)vlen, 0) < 0) {
				if (!warned++) printf("warn %s some extended attributes could not be restored: %s: %s: %s\n", label, rel, name, strerror(errno));
			}
		}
		p = eol + 1;
	}
}

/*
 * Layers are applied in two parts (the rules of format/manifest.ts, "Applying a layer"):
 *  1. extract_layer, in a child process per layer: the manifest and every removal path are
 *     checked and the archive is extracted into the layer's own staging directory. Nothing
 *     here depends on the tree or on the other layers, so up to two children per CPU run
 *     ahead of the merging;
 *  2. merge_layer, in order, in the parent: removals, the merge by rename, the xattrs.
 * A layer whose child failed is skipped whole: the tree never saw it.
 */
static int extract_layer(const char *file, const char *stage, long jobs, uint64_t *entries)
{
	uint64_t size = 0, bytes = 0, cpio = 0;
	int threads;
	if (map_image(file, &size) < 0) return -1;
	if (strcmp(g_kind, "layer") != 0) return fail("not a layer (kind %s)", g_kind[0] ? g_kind : "missing");
	if (each_removal(refuse_unsafe, NULL)) return -1;
	if ((remove_tree_at(AT_FDCWD, stage) < 0 && errno != ENOENT) || mkdir(stage, 0700) < 0 ||
	    (g_destfd = open(stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return fail("cannot make the staging directory %s: %s", stage, strerror(errno));
	struct stat stage_st; /* made empty just now; a setgid parent would make it setgid */
	g_fresh = fstat(g_destfd, &stage_st) == 0 && !(stage_st.st_mode & S_ISGID);
	return extract_image(jobs, entries, &bytes, &cpio, &threads);
}

struct layer_job {
	pid_t pid;
	int msg; /* the child's report: "ENTRIES" or "!REASON", then EOF */
	char stage[PATH_MAX];
	char *error; /* the child could not be started */
};

static int start_layer_job(struct layer_job *j, const char *file, const char *stage, int i, long jobs)
{
	int p[2];
	snprintf(j->stage, sizeof j->stage, "%s.%d", stage, i);
	if (pipe2(p, O_CLOEXEC) < 0) return fail("pipe: %s", strerror(errno));
	fflush(stdout);
	j->pid = fork();
	if (j->pid < 0) {
		close(p[0]);
		close(p[1]);
		return fail("fork: %s", strerror(errno));
	}
	if (j->pid == 0) {
		close(p[0]);
		uint64_t entries = 0;
		char out[sizeof g_err + 32];
		int rc = extract_layer(file, j->stage, jobs, &entries);
		int len = rc == 0 ? snprintf(out, sizeof out, "%llu", (unsigned long long)entries) : snprintf(out, sizeof out, "!%s", g_err);
		if (write(p[1], out, (size_t)len) < 0) _exit(1);
		_exit(rc == 0 ? 0 : 1);
	}
	close(p[1]);
	j->msg = p[0];
	return 0;
}

/* Waits for the child; 0 with *entries, or -1 with the reason in g_err. */
static int finish_layer_job(struct layer_job *j, uint64_t *entries)
{
	char buf[sizeof g_err + 32];
	size_t len = 0;
	ssize_t n;
	while (len < sizeof buf - 1 && ((n = read(j->msg, buf + len, sizeof buf - 1 - len)) > 0 || (n < 0 && errno == EINTR)))
		if (n > 0) len += (size_t)n;
	buf[len] = '\0';
	close(j->msg);
	int st = 0;
	while (waitpid(j->pid, &st, 0) < 0 && errno == EINTR) {}
	atomic_store(&g_failed, 0);
	g_err[0] = '\0';
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && len && buf[0] != '!') {
		*entries = strtoull(buf, NULL, 10);
		return 0;
	}
	if (len && buf[0] == '!') return fail("%s", buf + 1);
	if (WIFSIGNALED(st)) return fail("extracting it was killed by signal %d", WTERMSIG(st));
	return fail("extracting it failed (exit status %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* Part 2 for an extracted layer: 0 applied, 3 failed while changing the tree. */
static int merge_layer(const char *file, const char *tree, int treefd, const char *stage, uint64_t *removed)
{
	uint64_t size = 0;
	int rc = 3;
	/* the manifest again, here: its removal lines and xattrs (the child checked them) */
	if (map_image(file, &size) < 0) goto out;
	int sfd = open(stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0) {
		fail("cannot open the staging directory %s: %s", stage, strerror(errno));
		goto out;
	}
	struct removal rm = { treefd, 0 };
	int bad = each_removal(remove_path, &rm) || merge_dir(sfd, treefd, "");
	close(sfd);
	if (bad) goto out;
	*removed = rm.removed;
	const char *slash = strrchr(file, '/');
	restore_xattrs(tree, slash ? slash + 1 : file);
	rc = 0;
out:
	unmap_image(size);
	return rc;
}

/*
 * -l TREE STAGE LAYER...: the layers in the order given (staging directories STAGE.0, STAGE.1,
 * …). One line per layer on stdout, in order, after any "warn NAME text" lines of that layer:
 *   ok NAME ENTRIES REMOVED | skip NAME REASON | partial NAME REASON
 * NAME is the file's base name. Exit 0 all applied, 1 some skipped, 3 some partly applied.
 */
static int apply_layers_main(const char *tree, const char *stage, char **files, int n, long jobs)
{
	int treefd = open(tree, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (treefd < 0) {
		fprintf(stderr, "mkma-unpack: cannot open the tree %s: %s\n", tree, strerror(errno));
		return 2;
	}
	struct layer_job *js = calloc((size_t)(n ? n : 1), sizeof *js);
	if (!js) {
		fprintf(stderr, "mkma-unpack: out of memory\n");
		return 2;
	}
	/* children ahead of the merge: two per CPU (measured on 2 CPUs: one per CPU left the
	 * CPUs idle while the parent merged); -j N sets it */
	long ahead = jobs ? jobs : 2 * online_cpus();
	int started = 0, status = 0;
	for (int i = 0; i < n; i++) {
		const char *slash = strrchr(files[i], '/');
		const char *label = slash ? slash + 1 : files[i];
		/* each child extracts with one thread (layers are small: mostly one shard), a
		 * single layer with all of them */
		for (; started < n && started <= i + ahead - 1; started++) {
			atomic_store(&g_failed, 0);
			if (start_layer_job(&js[started], files[started], stage, started, n == 1 ? 0 : 1) < 0) {
				js[started].pid = -1;
				js[started].error = strdup(g_err);
			}
		}
		uint64_t entries = 0, removed = 0;
		int rc;
		if (js[i].pid < 0) {
			atomic_store(&g_failed, 0);
			fail("%s", js[i].error ? js[i].error : "out of memory");
			free(js[i].error);
			rc = 1;
		} else {
			rc = finish_layer_job(&js[i], &entries) == 0 ? merge_layer(files[i], tree, treefd, js[i].stage, &removed) : 1;
			/* the stage goes in every case (empty after a merge); failing to remove it
			 * only matters when all went well */
			if (rmdir(js[i].stage) < 0 && errno != ENOENT && remove_tree_at(AT_FDCWD, js[i].stage) < 0 && errno != ENOENT &&
			    rc == 0) {
				atomic_store(&g_failed, 0);
				fail("cannot remove the staging directory %s: %s", js[i].stage, strerror(errno));
				rc = 3;
			}
		}
		if (rc == 0) printf("ok %s %llu %llu\n", label, (unsigned long long)entries, (unsigned long long)removed);
		else printf("%s %s %s\n", rc == 3 ? "partial" : "skip", label, g_err);
		if (rc > status) status = rc;
		fflush(stdout);
	}
	free(js);
	close(treefd);
	return status;
}

/* One line per FILE: "ok KIND ENTRIES UNPACKED_BYTES DATA_BYTES" or "bad REASON". */
static int info_main(char **files, int n)
{
	for (int i = 0; i < n; i++) {
		uint64_t size = 0;
		atomic_store(&g_failed, 0);
		if (map_image(files[i], &size) == 0) {
			uint64_t data = 0;
			for (size_t k = 0; k < g_nshards; k++) data += g_shards[k].length;
			printf("ok %s %llu %llu %llu\n", g_kind[0] ? g_kind : "-", (unsigned long long)g_entries,
			       (unsigned long long)g_unpacked, (unsigned long long)data);
		} else {
			printf("bad %s\n", g_err);
		}
		unmap_image(size);
	}
	return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	long jobs = 0;
	int verbose = 0, layer = 0, info = 0, with_xattrs = 0, opt;
	while ((opt = getopt(argc, argv, "j:vhliX")) != -1) {
		switch (opt) {
		case 'j': {
			char *end;
			errno = 0;
			jobs = strtol(optarg, &end, 10);
			if (errno || *end || jobs < 1 || jobs > 1024) {
				fprintf(stderr, "mkma-unpack: -j wants a number from 1 to 1024\n");
				return 2;
			}
			break;
		}
		case 'v': verbose = 1; break;
		case 'l': layer = 1; break;
		case 'i': info = 1; break;
		case 'X': with_xattrs = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	umask(0);
	g_euid = geteuid();
	g_egid = getegid();
	g_chown = g_euid == 0;
	if (info) {
		if (argc - optind < 1) {
			usage(stderr);
			return 2;
		}
		return info_main(argv + optind, argc - optind);
	}
	if (layer) {
		if (argc - optind < 2) {
			usage(stderr);
			return 2;
		}
		return apply_layers_main(argv[optind], argv[optind + 1], argv + optind + 2, argc - optind - 2, jobs);
	}
	if (argc - optind != 2) {
		usage(stderr);
		return 2;
	}
	const char *file = argv[optind], *dest = argv[optind + 1];
	int from_stdin = strcmp(file, "-") == 0;
	g_file_label = from_stdin ? "stdin" : file;
	double t0 = now();

	g_destfd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (g_destfd < 0) {
		fprintf(stderr, "mkma-unpack: %s: cannot open the target directory %s: %s\n", g_file_label, dest, strerror(errno));
		return 1;
	}
	struct stat dest_st;
	g_fresh = fstat(g_destfd, &dest_st) == 0 && !(dest_st.st_mode & S_ISGID) && dir_is_empty(g_destfd);

	uint64_t entries = 0, bytes = 0, cpio = 0;
	int nw = 1;
	if (from_stdin) {
		struct worker *w = calloc(1, sizeof *w);
		if (!w) fail("out of memory");
		else if (worker_setup(w) == 0) {
			struct stream s = { .fd = 0, .buf = w->buf };
			snprintf(s.what, sizeof s.what, "stdin");
			if (extract_stream(w, &s, 1) == 0) apply_dirs(w, 1);
			entries = w->entries;
			bytes = w->file_bytes;
			cpio = w->cpio_bytes;
		}
	} else {
		uint64_t size = 0;
		if (map_image(file, &size) == 0 && extract_image(jobs, &entries, &bytes, &cpio, &nw) == 0 && with_xattrs) {
			const char *slash = strrchr(file, '/');
			restore_xattrs(dest, slash ? slash + 1 : file);
		}
	}
	if (atomic_load(&g_failed)) {
		fprintf(stderr, "mkma-unpack: %s: %s\n", g_file_label, g_err);
		return 1;
	}
	if (verbose) {
		double sec = now() - t0;
		printf("mkma-unpack: %s: %llu entries, %llu bytes of file data (%llu of cpio) in %.3f s, %.1f MB/s, %d thread%s\n",
		       g_file_label, (unsigned long long)entries, (unsigned long long)bytes, (unsigned long long)cpio, sec,
		       sec > 0 ? (double)cpio / 1e6 / sec : 0.0, nw, nw == 1 ? "" : "s");
	}
	return 0;
}
