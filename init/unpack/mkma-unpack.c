/*
 * mkma-unpack: extracts an mkma image (base.cpio.zst, persistence layers) into a directory,
 * fast and without ever leaving it. The boot-time replacement for
 * `zstd -dc FILE | busybox cpio -i -d -m`.
 *
 *   mkma-unpack [-v] [-X] [-j N] [-t LAYER]... FILE DEST
 *                                       an mkma image into the empty directory DEST: its shards
 *                                       in parallel (N threads, default: the online CPUs);
 *                                       -X: and its %xattrs section; -t: only what the LAYERs
 *                                       reach (`mkma layers compact`, collect_touched)
 *   mkma-unpack -l TREE STAGE LAYER...  layers applied to TREE in order (see apply_layers_main)
 *   mkma-unpack -i FILE...              what the init's space check needs from each manifest
 *   mkma-unpack [-v] - DEST             a plain (uncompressed) cpio newc stream on stdin
 *
 * Build: builder/unpacker.ts compiles it (gcc -O2 -static ... -include mkma-contract.h) and
 * caches the result. The constants shared with the TypeScript side and the init (file
 * format, output protocol, exit statuses) come from that generated header, made from
 * lib/contract.ts: this file spells none of them out.
 *
 * The format and every rule applied here are written down once, in docs/FORMAT.md, and held
 * together with the two other implementations (format/reader.ts + format/apply.ts, and the
 * init's busybox fallback in init/templates/layer-busybox.sh) by the conformance corpus
 * (test/conformance/). In short:
 *   - every name is resolved beneath DEST without following any symlink (openat2 with
 *     RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS; on kernels before 5.6 a walk, one component at a
 *     time, with O_NOFOLLOW|O_DIRECTORY). DEST must be empty, so anything met on the way was
 *     made by this archive: an archive naming something twice, or naming something below a
 *     non-directory, is refused, whatever the order of its entries (shards run in parallel);
 *   - directory metadata is applied at the end through a descriptor opened
 *     O_DIRECTORY|O_NOFOLLOW; layers are merged and removals made through descriptors
 *     resolved the same way; xattrs are set relative to such a descriptor.
 *
 * Why it is faster than busybox cpio (measured 28 syscalls per entry there, 4-5 here):
 *   - entries are created relative to their parent directory's descriptor, kept while the
 *     archive stays in that directory (archive order: nearly always), without
 *     stat-before-create; a missing parent (a parallel shard) is made on ENOENT;
 *   - file data is written straight from the decompression buffer;
 *   - regular files cost openat + write + futimens + close, plus fchown unless the owner is
 *     the one a new file gets anyway (root:root in a non-setgid DEST), plus fchmod only for
 *     setuid/setgid/sticky;
 *   - independent shards are decompressed and extracted by parallel threads; the input is
 *     mmap()ed (readahead for the whole file at once, no read() calls).
 * Directory metadata (owner, mode, mtime) is applied once every thread is done, deepest
 * first: creating children would otherwise change the mtimes.
 *
 * Exit status (UNPACK_EXIT_*): 0 success (silent unless -v), 1 failure with exactly one line
 * "mkma-unpack: FILE: reason" on stderr (DEST may be partially filled), 2 usage error;
 * -l: 0 all applied, 1 some skipped (TREE untouched by those), 3 some partly applied.
 * Malformed input never crashes it: every header field is bounds-checked (and fuzzed in CI:
 * test/fuzz/).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#ifndef MKMA_CONTRACT
#error "compile with the generated boot contract header: -include mkma-contract.h (builder/unpacker.ts)"
#endif

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; older kernels answer EINVAL, which is fine */
#endif

#define FOOTER_TAG_LEN (sizeof MKMA_FOOTER_TAG - 1)
#define FOOTER_SIZE (FOOTER_TAG_LEN + MKMA_FOOTER_DIGITS + 1)
/* namesize includes the NUL */
#define NAME_LIMIT MKMA_NAME_LIMIT
#define SYMLINK_LIMIT MKMA_SYMLINK_LIMIT

/* Decompression buffer per thread: small enough to stay in cache, large enough that most
 * files are written with one write() and big ones in few. Holds any header + name. */
#define BUF_SIZE (256u * 1024u)

static size_t pad4(uint64_t n) { return (size_t)((4 - (n & 3)) & 3); }

/* --- errors: the first one wins and stops every thread of its run ---------------------- */

struct failure {
	atomic_int set;
	pthread_mutex_t lock;
	char msg[1024];
};

static int fail(struct failure *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct failure *f, const char *fmt, ...)
{
	pthread_mutex_lock(&f->lock);
	if (!atomic_load(&f->set)) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(f->msg, sizeof f->msg, fmt, ap);
		va_end(ap);
		/* one line: a name with a newline must not split the message */
		for (char *p = f->msg; *p; p++)
			if (*p == '\n' || *p == '\r') *p = '?';
		atomic_store(&f->set, 1);
	}
	pthread_mutex_unlock(&f->lock);
	return -1;
}

static void failure_reset(struct failure *f)
{
	atomic_store(&f->set, 0);
	f->msg[0] = '\0';
}

static int failed(struct failure *f) { return atomic_load_explicit(&f->set, memory_order_relaxed); }

/* --- names ------------------------------------------------------------------------------- */

/* A relative path that stays inside the tree: not empty, no leading or trailing "/", no
 * empty, "." or ".." component, shorter than NAME_LIMIT (docs/FORMAT.md, "Names"). */
static int safe_rel(const char *p)
{
	if (!*p || strlen(p) >= NAME_LIMIT) return 0;
	for (const char *c = p;;) {
		const char *slash = strchr(c, '/');
		size_t len = slash ? (size_t)(slash - c) : strlen(c);
		if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.')) return 0;
		if (!slash) return 1;
		c = slash + 1;
	}
}

/* An archive name: "." (the target itself), or a safe relative path, optionally written
 * "./PATH" (as `find . | cpio -o` writes it); leading slashes are dropped first, as GNU and
 * busybox cpio drop them. NULL when the name could leave the target or is not in that form. */
static const char *clean_name(const char *name)
{
	while (*name == '/') name++;
	if (strcmp(name, ".") == 0) return ".";
	if (name[0] == '.' && name[1] == '/') name += 2;
	return safe_rel(name) ? name : NULL;
}

/* --- a set of paths (-t: what the layers touch) --------------------------------------------- */

struct pathset {
	char **v; /* open addressing; NULL: free slot */
	size_t cap, used;
};

static uint64_t ps_hash(const char *p)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
	return h;
}

static int ps_has(const struct pathset *s, const char *p)
{
	if (!s->cap) return 0;
	for (size_t i = ps_hash(p) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (!s->v[i]) return 0;
		if (strcmp(s->v[i], p) == 0) return 1;
	}
}

/* Adds the first len bytes of p. 0, or -1 when out of memory. */
static int ps_add_len(struct pathset *s, const char *p, size_t len)
{
	char *copy = strndup(p, len);
	if (!copy) return -1;
	if (ps_has(s, copy)) {
		free(copy);
		return 0;
	}
	if ((s->used + 1) * 2 > s->cap) { /* keep the load under 1/2 */
		size_t cap = s->cap ? s->cap * 2 : 1024;
		char **v = calloc(cap, sizeof *v);
		if (!v) {
			free(copy);
			return -1;
		}
		for (size_t i = 0; i < s->cap; i++) {
			if (!s->v[i]) continue;
			size_t j = ps_hash(s->v[i]) & (cap - 1);
			while (v[j]) j = (j + 1) & (cap - 1);
			v[j] = s->v[i];
		}
		free(s->v);
		s->v = v;
		s->cap = cap;
	}
	size_t i = ps_hash(copy) & (s->cap - 1);
	while (s->v[i]) i = (i + 1) & (s->cap - 1);
	s->v[i] = copy;
	s->used++;
	return 0;
}

/* Adds a clean relative path and every directory above it ("a/b/c": a, a/b, a/b/c). */
static int ps_add_with_parents(struct pathset *s, const char *p)
{
	if (strcmp(p, ".") == 0) return 0;
	for (const char *c = p;; c++) {
		if (*c == '/' || !*c)
			if (ps_add_len(s, p, (size_t)(c - p)) < 0) return -1;
		if (!*c) return 0;
	}
}

static void ps_free(struct pathset *s)
{
	for (size_t i = 0; i < s->cap; i++) free(s->v[i]);
	free(s->v);
	memset(s, 0, sizeof *s);
}

/* --- resolving beneath a directory, never through a symlink ------------------------------ */

/* Does the kernel have openat2 (Linux 5.6)? -1 not known yet. Process-wide, set once. */
static atomic_int g_have_openat2 = -1;

/* The fallback walk: one component at a time, each opened O_PATH|O_DIRECTORY|O_NOFOLLOW
 * relative to the previous one. A symlink or a file on the way fails with ENOTDIR. */
static int walk_beneath(int root, const char *rel, int flags)
{
	char buf[NAME_LIMIT];
	size_t len = strlen(rel);
	if (len >= sizeof buf) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, rel, len + 1);
	int cur = root;
	char *c = buf;
	for (char *slash; (slash = strchr(c, '/')) != NULL; c = slash + 1) {
		*slash = '\0';
		int fd = openat(cur, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int e = errno;
		if (cur != root) close(cur);
		if (fd < 0) {
			errno = e;
			return -1;
		}
		cur = fd;
	}
	int fd = openat(cur, c, flags | O_NOFOLLOW | O_CLOEXEC, 0);
	int e = errno;
	if (cur != root) close(cur);
	errno = e;
	return fd;
}

/* Opens rel (a safe relative path, or "" / "." for root itself) beneath root without
 * following any symlink on the way or at the end. flags: O_PATH|O_DIRECTORY, O_RDONLY|O_DIRECTORY… */
static int open_beneath(int root, const char *rel, int flags)
{
	if (!*rel || strcmp(rel, ".") == 0) return openat(root, ".", flags | O_CLOEXEC);
	if (atomic_load_explicit(&g_have_openat2, memory_order_relaxed) != 0) {
		struct open_how how = {
			.flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
		};
		int fd = (int)syscall(SYS_openat2, root, rel, &how, sizeof how);
		if (fd >= 0 || (errno != ENOSYS && errno != EPERM)) {
			atomic_store_explicit(&g_have_openat2, 1, memory_order_relaxed);
			return fd;
		}
		/* ENOSYS: an old kernel; EPERM: a seccomp filter that does not know openat2 */
		atomic_store_explicit(&g_have_openat2, 0, memory_order_relaxed);
	}
	return walk_beneath(root, rel, flags);
}

/* For a message: the first component of rel (below root) that is not a real directory. */
static const char *first_non_dir(int root, const char *rel, char *out, size_t cap)
{
	snprintf(out, cap, "%s", rel);
	for (char *p = out; (p = strchr(p, '/')) != NULL; p++) {
		struct stat st;
		*p = '\0';
		if (fstatat(root, out, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)) return out;
		*p = '/';
	}
	return out;
}

/* dirname/basename of a relative path, into caller buffers: parent "" for a top-level name. */
static void split_path(const char *rel, char *parent, size_t cap, const char **leaf)
{
	const char *slash = strrchr(rel, '/');
	if (!slash) {
		parent[0] = '\0';
		*leaf = rel;
		return;
	}
	size_t n = (size_t)(slash - rel);
	if (n >= cap) n = cap - 1;
	memcpy(parent, rel, n);
	parent[n] = '\0';
	*leaf = slash + 1;
}

/* --- removing a tree, iteratively (no recursion, no descriptor per level) ----------------- */

struct strstack {
	char **v;
	size_t n, cap;
};

static int ss_push(struct strstack *s, char *str)
{
	if (!str) return -1;
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 32;
		char **v = realloc(s->v, cap * sizeof *v);
		if (!v) {
			free(str);
			return -1;
		}
		s->v = v;
		s->cap = cap;
	}
	s->v[s->n++] = str;
	return 0;
}

static void ss_free(struct strstack *s)
{
	while (s->n) free(s->v[--s->n]);
	free(s->v);
	s->v = NULL;
	s->cap = 0;
}

static char *join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *s = malloc(la + lb + 2);
	if (!s) return NULL;
	memcpy(s, a, la);
	size_t k = la;
	if (la) s[k++] = '/';
	memcpy(s + k, b, lb + 1);
	return s;
}

/* getdents64 directly: entries leave directories while they are read, and the DIR layer
 * would add a dup and an fcntl per directory (thousands in a layer). */
struct linux_dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

/* Reads every name of the directory fd (except . and ..) into a NUL-separated heap buffer;
 * *types gets each entry's d_type. Returns the count, -1 on error (errno set). */
static long read_names(int fd, char **names, unsigned char **types)
{
	char dents[16384];
	size_t len = 0, cap = 0, n = 0, tcap = 0;
	*names = NULL;
	*types = NULL;
	for (;;) {
		long r = syscall(SYS_getdents64, fd, dents, sizeof dents);
		if (r < 0) goto err;
		if (r == 0) return (long)n;
		for (long off = 0; off < r;) {
			struct linux_dirent64 *e = (struct linux_dirent64 *)(dents + off);
			off += e->d_reclen;
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
			size_t l = strlen(e->d_name) + 1;
			if (len + l > cap) {
				cap = (len + l) * 2 + 4096;
				char *v = realloc(*names, cap);
				if (!v) goto oom;
				*names = v;
			}
			if (n == tcap) {
				tcap = tcap ? tcap * 2 : 64;
				unsigned char *t = realloc(*types, tcap);
				if (!t) goto oom;
				*types = t;
			}
			memcpy(*names + len, e->d_name, l);
			len += l;
			(*types)[n++] = e->d_type;
		}
	}
oom:
	errno = ENOMEM;
err:;
	int e = errno;
	free(*names);
	free(*types);
	*names = NULL;
	*types = NULL;
	errno = e;
	return -1;
}

/* Removes rel (below root) whatever it is; a directory with everything in it, never
 * following a symlink. Depth-first with one directory descriptor at a time, each opened
 * O_NOFOLLOW from its parent and left through "..": any depth, whatever the path length.
 * 0, or -1 with errno. */
static int remove_tree(int root, const char *rel)
{
	char parent[NAME_LIMIT];
	const char *leaf;
	split_path(rel, parent, sizeof parent, &leaf);
	int pfd = open_beneath(root, parent, O_PATH | O_DIRECTORY);
	if (pfd < 0) return -1;
	if (unlinkat(pfd, leaf, 0) == 0) {
		close(pfd);
		return 0;
	}
	if (errno != EISDIR && errno != EPERM) {
		int e = errno;
		close(pfd);
		errno = e;
		return -1;
	}
	struct strstack names = { 0 }; /* the directories entered below pfd, outermost first */
	int fd = openat(pfd, leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int rc = fd < 0 || ss_push(&names, strdup(leaf)) < 0 ? -1 : 0;
	while (rc == 0 && names.n) {
		char *list;
		unsigned char *types;
		long n = read_names(fd, &list, &types);
		if (n < 0) {
			rc = -1;
			break;
		}
		const char *sub = NULL, *nm = list;
		for (long i = 0; i < n; i++, nm += strlen(nm) + 1) {
			if (types[i] != DT_DIR && unlinkat(fd, nm, 0) == 0) continue;
			if (types[i] != DT_DIR && errno != EISDIR && errno != EPERM) {
				rc = -1;
				break;
			}
			sub = nm;
			break;
		}
		if (rc == 0 && sub) {
			/* down into the first subdirectory; this one is read again when we are back */
			int down = openat(fd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (down < 0 || ss_push(&names, strdup(sub)) < 0) {
				if (down >= 0) close(down);
				rc = -1;
			} else {
				close(fd);
				fd = down;
			}
		} else if (rc == 0) {
			/* empty: up, and remove it there */
			char *me = names.v[--names.n];
			int up = names.n ? openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : pfd;
			if (up < 0 || unlinkat(up, me, AT_REMOVEDIR) < 0) rc = -1;
			free(me);
			close(fd);
			fd = names.n ? up : -1;
		}
		free(list);
		free(types);
	}
	int e = errno;
	if (fd >= 0) close(fd);
	close(pfd);
	ss_free(&names);
	errno = e;
	return rc;
}

/* Removes an absolute (or cwd-relative) path of mkma's own, such as a staging directory. */
static int remove_own(const char *path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	const char *base = slash ? slash + 1 : dir;
	int dfd = slash ? open(slash == dir ? "/" : (*slash = '\0', dir), O_PATH | O_DIRECTORY | O_CLOEXEC) : open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) return -1;
	int r = remove_tree(dfd, base);
	int e = errno;
	close(dfd);
	errno = e;
	return r;
}

/* --- one image: the mapped file and what its manifest says -------------------------------- */

struct shard {
	uint64_t offset, length;
};

struct image {
	const uint8_t *map;
	uint64_t size;
	struct shard *shards;
	size_t nshards;
	const char *body, *body_end; /* the manifest body, in the mapping */
	const char *xattrs;          /* the %xattrs section's content */
	char kind[16];
	uint64_t entries, unpacked, data_bytes;
};

/* --- one extraction: an archive into one empty directory ---------------------------------- */

struct dir_rec {
	char *path; /* relative to the target, "." for the target itself */
	uint32_t uid, gid, mode, mtime;
	int depth;
};

struct dir_list {
	struct dir_rec *v;
	size_t n, cap;
};

struct unpack {
	struct failure *err;
	int destfd;
	int chown; /* only root can give files away; others keep their own ids (like tar) */
	/* the target is not setgid: every directory below it is created here, without setgid
	 * bits until the very end (apply_dirs), so a new file is owned by our euid:egid and a
	 * chown to exactly those ids can be left out (most of a root filesystem is root:root) */
	int owner_default;
	uid_t euid;
	gid_t egid;
	struct image *img; /* NULL: a plain stream from stdin */
	atomic_size_t next_shard;
	/* -t: only these paths (and every hardlinked file) are extracted; NULL: everything */
	const struct pathset *only;
};

static int owner_is_ours(const struct unpack *u, uint32_t uid, uint32_t gid)
{
	return u->owner_default && uid == u->euid && gid == u->egid;
}

/* --- hardlinks: per shard ------------------------------------------------------------------- */

struct link_slot {
	uint32_t ino;
	int has_data;
	char *path; /* NULL: free slot. The first member created: later members link to it. */
};

struct link_table {
	struct link_slot *v;
	size_t cap, used; /* cap: 0 or a power of two */
};

static size_t link_hash(uint32_t ino)
{
	uint64_t h = ino * 0x9E3779B97F4A7C15ull;
	return (size_t)(h ^ (h >> 29));
}

static struct link_slot *link_find(struct link_table *t, uint32_t ino)
{
	if (!t->cap) return NULL;
	for (size_t i = link_hash(ino) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
		struct link_slot *s = &t->v[i];
		if (!s->path) return NULL;
		if (s->ino == ino) return s;
	}
}

static struct link_slot *link_add(struct link_table *t, uint32_t ino, const char *path)
{
	if ((t->used + 1) * 2 > t->cap) { /* keep the load under 1/2 */
		size_t cap = t->cap ? t->cap * 2 : 64;
		struct link_slot *v = calloc(cap, sizeof *v);
		if (!v) return NULL;
		for (size_t i = 0; i < t->cap; i++) {
			struct link_slot *o = &t->v[i];
			if (!o->path) continue;
			size_t j = link_hash(o->ino) & (cap - 1);
			while (v[j].path) j = (j + 1) & (cap - 1);
			v[j] = *o;
		}
		free(t->v);
		t->v = v;
		t->cap = cap;
	}
	char *copy = strdup(path);
	if (!copy) return NULL;
	size_t i = link_hash(ino) & (t->cap - 1);
	while (t->v[i].path) i = (i + 1) & (t->cap - 1);
	t->v[i] = (struct link_slot){ ino, 0, copy };
	t->used++;
	return &t->v[i];
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
	struct failure *err;
	ZSTD_DCtx *dctx; /* NULL: read plain cpio from fd */
	const uint8_t *in;
	size_t in_len, in_pos;
	int frame_done; /* the last zstd call completed a frame (checksum verified) */
	int fd;
	int eof;
	uint8_t *buf;
	size_t start, end; /* unconsumed bytes: buf[start..end) */
	uint64_t offset;   /* cpio bytes consumed, for messages */
	char what[64];     /* "shard 3 of 9" or "stdin", for messages */
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
			if (errno != EINTR) return fail(s->err, "%s: read: %s", s->what, strerror(errno));
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
		if (ZSTD_isError(r)) return fail(s->err, "%s: zstd: %s", s->what, ZSTD_getErrorName(r));
		int progressed = in.pos != s->in_pos || out.pos != 0;
		s->in_pos = in.pos;
		s->frame_done = r == 0;
		if (out.pos > 0) {
			s->end += out.pos;
			return 1;
		}
		if (!progressed) return fail(s->err, "%s: zstd: compressed data ends inside a frame (truncated)", s->what);
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

/* Passes over n bytes of data (padding). */
static int skip_data(struct stream *s, uint64_t n)
{
	while (n > 0) {
		if (s->end == s->start) {
			int r = fill(s);
			if (r < 0) return -1;
			if (r == 0) return fail(s->err, "%s: cpio data ends inside an entry (truncated)", s->what);
		}
		size_t take = s->end - s->start;
		if (take > n) take = (size_t)n;
		consume(s, take);
		n -= take;
	}
	return 0;
}

/* --- one worker: shards, one after another -------------------------------------------------- */

#define PARENT_SLOTS 8

struct worker {
	struct unpack *u;
	ZSTD_DCtx *dctx;
	uint8_t *buf;
	struct link_table links;
	struct dir_list dirs;
	uint64_t entries, file_bytes, cpio_bytes;
	pthread_t thread;
	char name[NAME_LIMIT];          /* the current entry's name, copied out of the buffer */
	char target[SYMLINK_LIMIT + 1]; /* the current symlink's target */
	/* the parent directories of the last entries, kept open: archives list a directory's
	 * entries together, and come back to its parents after a subdirectory, so most entries
	 * need no path resolution at all (the least recently used slot is reused) */
	struct parent_slot {
		char path[NAME_LIMIT];
		int fd; /* -1: free */
		uint64_t used;
	} parents[PARENT_SLOTS];
	uint64_t clock;
};

static int dir_add(struct worker *w, const char *path, uint32_t uid, uint32_t gid, uint32_t mode, uint32_t mtime)
{
	struct dir_list *l = &w->dirs;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 256;
		struct dir_rec *v = realloc(l->v, cap * sizeof *v);
		if (!v) return fail(w->u->err, "out of memory");
		l->v = v;
		l->cap = cap;
	}
	char *copy = strdup(path);
	if (!copy) return fail(w->u->err, "out of memory");
	int depth = 0;
	for (const char *p = path; *p; p++) depth += *p == '/';
	if (strcmp(path, ".") == 0) depth = -1;
	l->v[l->n++] = (struct dir_rec){ copy, uid, gid, mode, mtime, depth };
	return 0;
}

/* A reason for a name that cannot be created because of what lies on its way (ELOOP,
 * ENOTDIR): an earlier (or parallel) entry made a parent something else than a directory. */
static int fail_below(struct worker *w, const char *path)
{
	char nd[NAME_LIMIT];
	return fail(w->u->err, "\"%s\" lies below \"%s\", which is not a directory", path, first_non_dir(w->u->destfd, path, nd, sizeof nd));
}

/* Makes the missing directories of parent (below the target), each resolved like any
 * entry: 0755 placeholders until (if ever) their own entries set their metadata. */
static int make_parents(struct worker *w, const char *parent)
{
	char tmp[NAME_LIMIT];
	snprintf(tmp, sizeof tmp, "%s", parent);
	for (char *p = tmp;; p++) {
		char *slash = strchr(p, '/');
		if (slash) *slash = '\0';
		char up[NAME_LIMIT];
		const char *leaf;
		split_path(tmp, up, sizeof up, &leaf);
		int pfd = open_beneath(w->u->destfd, up, O_PATH | O_DIRECTORY);
		if (pfd < 0) return errno == ENOTDIR || errno == ELOOP ? fail_below(w, parent) : fail(w->u->err, "%s: %s", tmp, strerror(errno));
		int r = mkdirat(pfd, leaf, 0755);
		int e = errno;
		close(pfd);
		if (r < 0 && e != EEXIST) return fail(w->u->err, "%s: mkdir: %s", tmp, strerror(e));
		if (!slash) return 0;
		*slash = '/';
		p = slash;
	}
}

/* The descriptor of path's parent directory (*leaf: the last component), from the cache or
 * resolved beneath the target; missing parents are made. -1 on error (recorded). */
static int parent_of(struct worker *w, const char *path, const char **leaf)
{
	char parent[NAME_LIMIT];
	split_path(path, parent, sizeof parent, leaf);
	if (!parent[0]) return w->u->destfd;
	struct parent_slot *victim = &w->parents[0];
	for (int i = 0; i < PARENT_SLOTS; i++) {
		struct parent_slot *sl = &w->parents[i];
		if (sl->fd >= 0 && strcmp(parent, sl->path) == 0) {
			sl->used = ++w->clock;
			return sl->fd;
		}
		if (sl->fd < 0 || sl->used < victim->used) victim = sl;
		if (victim->fd < 0) victim->used = 0;
	}
	if (victim->fd >= 0) close(victim->fd);
	victim->fd = -1;
	for (int tries = 0; tries < 2; tries++) {
		int fd = open_beneath(w->u->destfd, parent, O_PATH | O_DIRECTORY);
		if (fd >= 0) {
			victim->fd = fd;
			victim->used = ++w->clock;
			memcpy(victim->path, parent, strlen(parent) + 1);
			return fd;
		}
		if (errno == ENOTDIR || errno == ELOOP) return fail_below(w, path);
		if (errno != ENOENT || tries) break;
		if (make_parents(w, parent) < 0) return -1;
	}
	return fail(w->u->err, "%s: cannot open its directory: %s", path, strerror(errno));
}

enum create_kind { C_FILE, C_DIR, C_SYMLINK, C_NODE, C_LINK };
static const char *const create_op[] = { "open", "mkdir", "symlink", "mknod", "link" };

/*
 * Creates path in its parent directory: one syscall when the parent is the cached one (in
 * archive order: nearly always). Returns the fd for C_FILE, 0 for the others, 1 for C_DIR
 * when the directory was already there (a placeholder made for entries below it: its own
 * entry sets the metadata), -1 on error (recorded). The target was empty: a name that is
 * already there was made by this archive, which is refused (docs/FORMAT.md: each name once,
 * nothing below a non-directory).
 */
static int create_at(struct worker *w, enum create_kind kind, const char *path, mode_t mode, dev_t rdev, const char *target, int *pfd_out)
{
	const char *leaf;
	int pfd = parent_of(w, path, &leaf);
	if (pfd < 0) return -1;
	if (pfd_out) *pfd_out = pfd;
	int r;
	switch (kind) {
	case C_FILE: r = openat(pfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode); break;
	case C_DIR: r = mkdirat(pfd, leaf, mode); break;
	case C_SYMLINK: r = symlinkat(target, pfd, leaf); break;
	case C_NODE: r = mknodat(pfd, leaf, mode, rdev); break;
	default: {
		/* target: the group's first member, a regular file this archive made */
		const char *tleaf;
		char tparent[NAME_LIMIT];
		split_path(target, tparent, sizeof tparent, &tleaf);
		int tfd = open_beneath(w->u->destfd, tparent, O_PATH | O_DIRECTORY);
		if (tfd < 0) return fail(w->u->err, "%s: link to %s: %s", path, target, strerror(errno));
		r = linkat(tfd, tleaf, pfd, leaf, 0);
		int e = errno;
		close(tfd);
		errno = e;
		break;
	}
	}
	if (r >= 0) return r;
	int err = errno;
	if (err == EEXIST) {
		struct stat st;
		int isdir = fstatat(pfd, leaf, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
		if (kind == C_DIR && isdir) return 1;
		if (kind != C_DIR && isdir)
			return fail(w->u->err, "\"%s\" is not a directory, but the archive also has it as a directory or has entries below it", path);
		return fail(w->u->err, "\"%s\" is in the archive twice", path);
	}
	if (err == ENOTDIR || err == ELOOP) return fail_below(w, path);
	return fail(w->u->err, "%s: %s: %s", path, create_op[kind], strerror(err));
}

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

/* Writes the entry's data (size bytes, then padding) from the stream into fd. */
static int copy_data(struct worker *w, struct stream *s, int fd, const char *path, uint64_t size)
{
	uint64_t left = size;
	while (left > 0) {
		if (s->end == s->start) {
			int r = fill(s);
			if (r < 0) return -1;
			if (r == 0) return fail(s->err, "%s: cpio data ends inside %s (truncated)", s->what, path);
		}
		size_t n = s->end - s->start;
		if (n > left) n = (size_t)left;
		const uint8_t *p = s->buf + s->start;
		size_t todo = n;
		while (todo > 0) {
			ssize_t r = write(fd, p, todo);
			if (r < 0) {
				if (errno == EINTR) continue;
				return fail(s->err, "%s: write: %s", path, strerror(errno));
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

static int set_times_fd(struct worker *w, int fd, const char *path, uint32_t mtime)
{
	struct timespec ts[2] = { { (time_t)mtime, 0 }, { (time_t)mtime, 0 } };
	if (futimens(fd, ts) < 0) return fail(w->u->err, "%s: utimens: %s", path, strerror(errno));
	return 0;
}

/* Owner, mode and mtime of a group's inode, from a member without data (a group without
 * data takes its last member's: what busybox cpio does, docs/FORMAT.md "Hardlinks"). */
static int set_meta_at(struct worker *w, int pfd, const char *leaf, const char *path, const struct header *h)
{
	if (w->u->chown && fchownat(pfd, leaf, h->uid, h->gid, AT_SYMLINK_NOFOLLOW) < 0)
		return fail(w->u->err, "%s: chown: %s", path, strerror(errno));
	if (fchmodat(pfd, leaf, h->mode & 07777, 0) < 0) return fail(w->u->err, "%s: chmod: %s", path, strerror(errno));
	struct timespec ts[2] = { { (time_t)h->mtime, 0 }, { (time_t)h->mtime, 0 } };
	if (utimensat(pfd, leaf, ts, AT_SYMLINK_NOFOLLOW) < 0) return fail(w->u->err, "%s: utimensat: %s", path, strerror(errno));
	return 0;
}

static int extract_file(struct worker *w, struct stream *s, const char *path, const struct header *h)
{
	int fd = -1, pfd = -1;
	int full_mode = 0; /* chmod the whole mode (an inode made by another member) */
	const char *leaf = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	if (h->nlink > 1) {
		struct link_slot *first = link_find(&w->links, h->ino);
		if (first && h->size == 0) {
			/* a further member: a link to the first one (which gets the data when it
			 * comes, GNU convention, or already has it) */
			if (create_at(w, C_LINK, path, 0, 0, first->path, &pfd) < 0) return -1;
			return first->has_data ? 0 : set_meta_at(w, pfd, leaf, path, h);
		}
		if (first) {
			/* the member carrying the data, after the others: write into their inode */
			if (first->has_data) return fail(w->u->err, "\"%s\": its hardlink group has data twice", path);
			first->has_data = 1;
			if (create_at(w, C_LINK, path, 0, 0, first->path, &pfd) < 0) return -1;
			fd = openat(pfd, leaf, O_WRONLY | O_TRUNC | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0) return fail(w->u->err, "%s: open: %s", path, strerror(errno));
			full_mode = 1;
		} else {
			struct link_slot *slot = link_add(&w->links, h->ino, path);
			if (!slot) return fail(w->u->err, "out of memory");
			slot->has_data = h->size > 0;
		}
	}
	if (fd < 0) {
		fd = create_at(w, C_FILE, path, h->mode & 0777, 0, NULL, NULL);
		if (fd < 0) return -1;
	}
	int rc = copy_data(w, s, fd, path, h->size);
	if (rc == 0 && w->u->chown && (full_mode || !owner_is_ours(w->u, h->uid, h->gid)) && fchown(fd, h->uid, h->gid) < 0)
		rc = fail(w->u->err, "%s: chown: %s", path, strerror(errno));
	/* created with the permission bits only (and chown clears setuid/setgid): the special
	 * bits, and only they, need a chmod after the chown */
	if (rc == 0 && (full_mode || (h->mode & 07000)) && fchmod(fd, h->mode & 07777) < 0)
		rc = fail(w->u->err, "%s: chmod: %s", path, strerror(errno));
	if (rc == 0) rc = set_times_fd(w, fd, path, h->mtime);
	if (close(fd) < 0 && rc == 0) rc = fail(w->u->err, "%s: close: %s", path, strerror(errno));
	return rc;
}

/* The header (and name, into name[NAME_LIMIT]) that starts at buf[start], consumed; its
 * data is not. 1: an entry, 0: TRAILER!!!, -1: error (recorded). */
static int read_header(struct stream *s, struct header *h, char *name)
{
	struct failure *err = s->err;
	const uint8_t *p = s->buf + s->start;
	if (memcmp(p, "07070", 5) != 0 || (p[5] != '1' && p[5] != '2'))
		return fail(err, "%s: not a cpio newc header at offset %llu", s->what, (unsigned long long)s->offset);
	uint32_t f[12]; /* the 13th field, "check", is not used by newc */
	for (int i = 0; i < 12; i++)
		if (parse_hex8(p + 6 + 8 * i, &f[i]) < 0)
			return fail(err, "%s: damaged cpio header at offset %llu", s->what, (unsigned long long)s->offset);
	*h = (struct header){ .ino = f[0], .mode = f[1], .uid = f[2], .gid = f[3], .nlink = f[4], .mtime = f[5],
			      .size = f[6], .devmaj = f[7], .devmin = f[8], .rdevmaj = f[9], .rdevmin = f[10], .namesize = f[11] };
	if (h->namesize < 2 || h->namesize > NAME_LIMIT)
		return fail(err, "%s: bad name size %u in the cpio header at offset %llu", s->what, h->namesize, (unsigned long long)s->offset);
	size_t head = MKMA_NEWC_HEADER_SIZE + h->namesize;
	head += pad4(head);
	int r = need(s, head);
	if (r < 0) return -1;
	if (r == 0) return fail(err, "%s: cpio data ends inside a header (truncated)", s->what);
	p = s->buf + s->start;
	const char *raw = (const char *)p + MKMA_NEWC_HEADER_SIZE;
	if (raw[h->namesize - 1] != '\0' || memchr(raw, '\0', h->namesize - 1))
		return fail(err, "%s: damaged name in the cpio header at offset %llu", s->what, (unsigned long long)s->offset);
	memcpy(name, raw, h->namesize);
	consume(s, head);
	return strcmp(name, MKMA_NEWC_TRAILER) == 0 ? 0 : 1;
}

/* One entry whose header starts at buf[start]. 1: an entry, 0: TRAILER!!!, -1: error. */
static int extract_entry(struct worker *w, struct stream *s)
{
	struct failure *err = w->u->err;
	struct header h;
	int r = read_header(s, &h, w->name);
	if (r <= 0) return r;

	w->entries++;
	const char *path = clean_name(w->name);
	if (!path) return fail(err, "unsafe name in the archive: \"%s\"", w->name);
	uint32_t type = h.mode & S_IFMT;
	/* "." is the target itself: only its metadata can come from the archive */
	if (type != S_IFDIR && strcmp(path, ".") == 0) return fail(err, "the archive's root entry \".\" is not a directory");
	/* -t: an entry no layer touches is passed over (its checks above and below still run) */
	int wanted = !w->u->only || strcmp(path, ".") == 0 || ps_has(w->u->only, path);

	if (type == S_IFREG) {
		/* every member of a hardlink group is kept: the data may come with another member */
		if (!wanted && h.nlink <= 1) return skip_data(s, (uint64_t)h.size + pad4(h.size)) < 0 ? -1 : 1;
		return extract_file(w, s, path, &h) < 0 ? -1 : 1;
	}

	if (type == S_IFLNK) {
		if (h.size == 0 || h.size > SYMLINK_LIMIT) return fail(err, "%s: bad symlink target length %u", path, h.size);
		r = need(s, h.size + pad4(h.size));
		if (r < 0) return -1;
		if (r == 0) return fail(err, "%s: cpio data ends inside %s (truncated)", s->what, path);
		memcpy(w->target, s->buf + s->start, h.size);
		w->target[h.size] = '\0';
		if (memchr(w->target, '\0', h.size)) return fail(err, "%s: symlink target contains a NUL byte", path);
		consume(s, h.size + pad4(h.size));
		if (!wanted) return 1;
		int pfd;
		if (create_at(w, C_SYMLINK, path, 0, 0, w->target, &pfd) < 0) return -1;
		const char *leaf = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
		if (w->u->chown && !owner_is_ours(w->u, h.uid, h.gid) && fchownat(pfd, leaf, h.uid, h.gid, AT_SYMLINK_NOFOLLOW) < 0)
			return fail(err, "%s: chown: %s", path, strerror(errno));
		struct timespec ts[2] = { { (time_t)h.mtime, 0 }, { (time_t)h.mtime, 0 } };
		if (utimensat(pfd, leaf, ts, AT_SYMLINK_NOFOLLOW) < 0) return fail(err, "%s: utimensat: %s", path, strerror(errno));
		return 1;
	}

	if (type != S_IFDIR && type != S_IFCHR && type != S_IFBLK && type != S_IFIFO)
		return fail(err, "%s: unsupported entry type 0%o%s", path, type >> 12, type == S_IFSOCK ? " (a socket)" : "");
	if (h.size != 0) return fail(err, "%s: an entry of type 0%o with %u bytes of data", path, type >> 12, h.size);
	if (!wanted) return 1;

	if (type == S_IFDIR) {
		if (strcmp(path, ".") != 0 && create_at(w, C_DIR, path, h.mode & 0777, 0, NULL, NULL) < 0) return -1;
		return dir_add(w, path, h.uid, h.gid, h.mode, h.mtime) < 0 ? -1 : 1;
	}
	int pfd;
	if (create_at(w, C_NODE, path, type | (h.mode & 0777), makedev(h.rdevmaj, h.rdevmin), NULL, &pfd) < 0) return -1;
	const char *leaf = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	if (w->u->chown && !owner_is_ours(w->u, h.uid, h.gid) && fchownat(pfd, leaf, h.uid, h.gid, AT_SYMLINK_NOFOLLOW) < 0)
		return fail(err, "%s: chown: %s", path, strerror(errno));
	/* a device or fifo this process just made (not a symlink: fchmodat may follow) */
	if ((h.mode & 07000) && fchmodat(pfd, leaf, h.mode & 07777, 0) < 0) return fail(err, "%s: chmod: %s", path, strerror(errno));
	struct timespec ts[2] = { { (time_t)h.mtime, 0 }, { (time_t)h.mtime, 0 } };
	if (utimensat(pfd, leaf, ts, AT_SYMLINK_NOFOLLOW) < 0) return fail(err, "%s: utimensat: %s", path, strerror(errno));
	return 1;
}

/* All entries of one stream. A shard ends on an entry boundary; the last one (is_last) must
 * end with TRAILER!!!, which no other shard may hold. */
static int extract_stream(struct worker *w, struct stream *s, int is_last)
{
	for (;;) {
		if (failed(w->u->err)) return -1;
		int r = need(s, MKMA_NEWC_HEADER_SIZE);
		if (r < 0) return -1;
		if (r == 0) {
			if (s->end != s->start) return fail(s->err, "%s: cpio data ends inside a header (truncated)", s->what);
			if (is_last) return fail(s->err, "%s: the archive ends without %s (truncated)", s->what, MKMA_NEWC_TRAILER);
			break;
		}
		r = extract_entry(w, s);
		if (r < 0) return -1;
		if (r == 0) {
			if (!is_last) return fail(s->err, "%s: %s before the last shard (damaged)", s->what, MKMA_NEWC_TRAILER);
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

static int worker_setup(struct worker *w, struct unpack *u)
{
	w->u = u;
	for (int i = 0; i < PARENT_SLOTS; i++) w->parents[i].fd = -1;
	w->buf = malloc(BUF_SIZE);
	if (!w->buf) return fail(u->err, "out of memory");
	return 0;
}

static void worker_free(struct worker *w)
{
	if (w->dctx) ZSTD_freeDCtx(w->dctx);
	for (int i = 0; i < PARENT_SLOTS; i++)
		if (w->parents[i].fd >= 0) close(w->parents[i].fd);
	link_clear(&w->links);
	free(w->links.v);
	for (size_t i = 0; i < w->dirs.n; i++) free(w->dirs.v[i].path);
	free(w->dirs.v);
	free(w->buf);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct unpack *u = w->u;
	struct image *img = u->img;
	w->dctx = ZSTD_createDCtx();
	if (!w->dctx) {
		fail(u->err, "out of memory (zstd)");
		return NULL;
	}
	for (;;) {
		if (failed(u->err)) break;
		size_t i = atomic_fetch_add(&u->next_shard, 1);
		if (i >= img->nshards) break;
		const struct shard *sh = &img->shards[i];
		/* fault the shard's pages in with one call (readahead was started for the file) */
		madvise((void *)((uintptr_t)(img->map + sh->offset) & ~(uintptr_t)4095),
			(size_t)sh->length + ((uintptr_t)(img->map + sh->offset) & 4095), MADV_POPULATE_READ);
		ZSTD_DCtx_reset(w->dctx, ZSTD_reset_session_only);
		struct stream s = { .err = u->err, .dctx = w->dctx, .in = img->map + sh->offset, .in_len = (size_t)sh->length, .buf = w->buf };
		if (img->nshards > 1) snprintf(s.what, sizeof s.what, "shard %zu of %zu", i + 1, img->nshards);
		else snprintf(s.what, sizeof s.what, "data");
		/* hardlink groups are per shard (docs/FORMAT.md) */
		link_clear(&w->links);
		if (extract_stream(w, &s, i == img->nshards - 1) < 0) break;
	}
	return NULL;
}

/* --- the manifest (docs/FORMAT.md, "The manifest") ------------------------------------------ */

/* A manifest number: 1 to MKMA_NUMBER_DIGITS decimal digits, no sign, no leading zero. */
static int parse_num(const char *p, const char *end, uint64_t *out)
{
	size_t n = (size_t)(end - p);
	if (n == 0 || n > MKMA_NUMBER_DIGITS || (n > 1 && p[0] == '0')) return -1;
	uint64_t v = 0;
	for (const char *q = p; q < end; q++) {
		if (*q < '0' || *q > '9') return -1;
		v = v * 10 + (uint64_t)(*q - '0');
	}
	*out = v;
	return 0;
}

static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

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

/* getfattr's spelling (paths and attribute names in %xattrs): `\ooo` is a byte, and a
 * backslash is never anything else. Returns the length, -1 when malformed or too long. */
static long decode_getfattr(const char *p, size_t len, char *out, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\\') {
			if (i + 3 >= len || octal3(p + i + 1) < 0) return -1;
			c = (unsigned char)octal3(p + i + 1);
			i += 3;
		}
		if (c == '\0' || n + 1 >= cap) return -1;
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return (long)n;
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

/* A value as getfattr writes it with -e hex or -e base64: "0x" and pairs of hex digits,
 * or "0s" and padded base64. Returns the decoded length, -1 when malformed or too long. */
static long decode_value(const char *p, size_t len, unsigned char *out, size_t cap)
{
	size_t n = 0;
	if (len < 2 || p[0] != '0') return -1;
	if (p[1] == 'x' || p[1] == 'X') {
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
			if (out) out[n] = (unsigned char)v;
			n++;
		}
		return (long)n;
	}
	if (p[1] == 's' || p[1] == 'S') {
		size_t body = len - 2;
		if (body % 4) return -1;
		uint32_t acc = 0;
		int bits = 0;
		for (size_t i = 2; i < len; i++) {
			if (p[i] == '=') {
				/* padding: one or two, only at the very end */
				size_t pad = len - i;
				if (pad > 2 || (pad == 2 && p[i + 1] != '=')) return -1;
				break;
			}
			int d = b64((unsigned char)p[i]);
			if (d < 0) return -1;
			acc = acc << 6 | (uint32_t)d;
			bits += 6;
			if (bits >= 8) {
				bits -= 8;
				if (n >= cap) return -1;
				if (out) out[n] = (unsigned char)(acc >> bits);
				n++;
			}
		}
		return (long)n;
	}
	return -1;
}

struct xattr_line {
	int kind; /* 0 empty, 1 "# file: PATH", 2 "NAME=VALUE" */
	char path[NAME_LIMIT];
	char name[MKMA_XATTR_NAME_LIMIT + 1];
	long vlen;
};

/* One line of the %xattrs section, decoded into x (the value into value, when given).
 * 0, or -1 when the line is malformed (docs/FORMAT.md, "%xattrs"). */
static int xattr_line(const char *p, size_t len, struct xattr_line *x, unsigned char *value)
{
	x->kind = 0;
	if (len == 0) return 0;
	if (len >= 8 && memcmp(p, "# file: ", 8) == 0) {
		x->kind = 1;
		if (decode_getfattr(p + 8, len - 8, x->path, sizeof x->path) < 0) return -1;
		return strcmp(x->path, ".") == 0 || safe_rel(x->path) ? 0 : -1;
	}
	const char *eq = memchr(p, '=', len);
	if (!eq || eq == p) return -1;
	x->kind = 2;
	if (decode_getfattr(p, (size_t)(eq - p), x->name, sizeof x->name) < 1) return -1;
	x->vlen = decode_value(eq + 1, len - (size_t)(eq - p) - 1, value, MKMA_XATTR_VALUE_LIMIT);
	return x->vlen < 0 ? -1 : 0;
}

/* Calls fn for each opaque/delete path of the manifest, decoded, in order; stops at the
 * first non-zero return. */
static int each_removal(struct image *img, int (*fn)(const char *path, void *arg), void *arg)
{
	char path[NAME_LIMIT];
	for (const char *p = img->body; p < img->xattrs;) {
		const char *nl = memchr(p, '\n', (size_t)(img->xattrs - p));
		const char *eol = nl ? nl : img->xattrs;
		size_t len = (size_t)(eol - p);
		size_t skip = len > 7 && (memcmp(p, "opaque ", 7) == 0 || memcmp(p, "delete ", 7) == 0) ? 7 : 0;
		if (skip && decode_path(p + skip, len - skip, path, sizeof path) == 0) {
			int r = fn(path, arg);
			if (r) return r;
		}
		p = eol + 1;
	}
	return 0;
}

/* Reads and checks the manifest at the end of the mapped file: every rule of
 * docs/FORMAT.md's "The manifest" is checked here, before anything is extracted. */
static int read_manifest(struct image *img, struct failure *err)
{
	const uint8_t *map = img->map;
	uint64_t size = img->size;
	if (size < FOOTER_SIZE + 8) return fail(err, "too small to be an mkma image (%llu bytes)", (unsigned long long)size);
	const char *foot = (const char *)map + size - FOOTER_SIZE;
	if (memcmp(foot, MKMA_FOOTER_TAG, FOOTER_TAG_LEN) != 0 || foot[FOOTER_SIZE - 1] != '\n')
		return fail(err, "no manifest at its end (truncated, or not an mkma image)");
	const char *num = foot + FOOTER_TAG_LEN, *num_end = foot + FOOTER_SIZE - 1;
	while (num < num_end && *num == ' ') num++;
	uint64_t body_len;
	if (parse_num(num, num_end, &body_len) < 0 || body_len == 0 || body_len > size - FOOTER_SIZE - 8)
		return fail(err, "damaged manifest footer");
	uint64_t frame_start = size - FOOTER_SIZE - body_len - 8;
	if (le32(map + frame_start) != MKMA_SKIPPABLE_MAGIC || le32(map + frame_start + 4) != body_len + FOOTER_SIZE)
		return fail(err, "manifest frame header is damaged");

	const char *p = (const char *)map + frame_start + 8, *body_end = p + body_len;
	img->body = p;
	img->body_end = body_end;
	img->xattrs = NULL;
	img->kind[0] = '\0';
	int have_entries = 0, have_unpacked = 0, have_data = 0, first = 1;
	size_t cap = 0;
	char path[NAME_LIMIT];
	while (p < body_end) {
		const char *nl = memchr(p, '\n', (size_t)(body_end - p));
		const char *eol = nl ? nl : body_end;
		size_t len = (size_t)(eol - p);
		if (first) {
			char head[32];
			int hl = snprintf(head, sizeof head, "mkma-manifest %d", MKMA_MANIFEST_VERSION);
			if (len != (size_t)hl || memcmp(p, head, len) != 0) return fail(err, "unsupported or damaged manifest header");
			first = 0;
		} else if (len == sizeof MKMA_XATTR_SECTION - 1 && memcmp(p, MKMA_XATTR_SECTION, len) == 0) {
			img->xattrs = eol < body_end ? eol + 1 : body_end;
			break;
		} else if (len >= 5 && memcmp(p, "kind ", 5) == 0) {
			if (img->kind[0]) return fail(err, "damaged manifest (kind twice)");
			if (len - 5 == 4 && memcmp(p + 5, "base", 4) == 0) strcpy(img->kind, "base");
			else if (len - 5 == 5 && memcmp(p + 5, "layer", 5) == 0) strcpy(img->kind, "layer");
			else return fail(err, "damaged manifest (unknown kind)");
		} else if (len >= 8 && memcmp(p, "entries ", 8) == 0) {
			if (have_entries++ || parse_num(p + 8, eol, &img->entries) < 0) return fail(err, "damaged manifest (entries)");
		} else if (len >= 15 && memcmp(p, "unpacked_bytes ", 15) == 0) {
			if (have_unpacked++ || parse_num(p + 15, eol, &img->unpacked) < 0) return fail(err, "damaged manifest (unpacked_bytes)");
		} else if (len >= 11 && memcmp(p, "data_bytes ", 11) == 0) {
			if (have_data++ || parse_num(p + 11, eol, &img->data_bytes) < 0) return fail(err, "damaged manifest (data_bytes)");
		} else if (len >= 6 && memcmp(p, "shard ", 6) == 0) {
			struct shard sh;
			const char *sp = memchr(p + 6, ' ', (size_t)(eol - p - 6));
			if (!sp || parse_num(p + 6, sp, &sh.offset) < 0 || parse_num(sp + 1, eol, &sh.length) < 0)
				return fail(err, "damaged manifest (shard line)");
			if (img->nshards == cap) {
				cap = cap ? cap * 2 : 64;
				struct shard *v = realloc(img->shards, cap * sizeof *v);
				if (!v) return fail(err, "out of memory");
				img->shards = v;
			}
			img->shards[img->nshards++] = sh;
		} else if (len >= 7 && (memcmp(p, "opaque ", 7) == 0 || memcmp(p, "delete ", 7) == 0)) {
			if (decode_path(p + 7, len - 7, path, sizeof path) < 0)
				return fail(err, "damaged manifest (bad or too long path in \"%.*s\")", (int)(len > 200 ? 200 : len), p);
			if (!safe_rel(path)) return fail(err, "unsafe path in manifest: %s", path);
		}
		/* any other line (created, message, data_sha256, keys of later versions): ignored */
		p = eol + 1;
	}
	if (first || !have_data || !have_entries || !have_unpacked || !img->kind[0])
		return fail(err, "manifest lacks kind/entries/unpacked_bytes/data_bytes (damaged)");
	if (!img->xattrs) return fail(err, "manifest has no %s section (damaged)", MKMA_XATTR_SECTION);
	/* the %xattrs section, every line */
	static struct xattr_line x; /* (4 KiB: off the stack of a fuzzing thread) */
	int have_file = 0;
	for (const char *q = img->xattrs; q < body_end;) {
		const char *nl = memchr(q, '\n', (size_t)(body_end - q));
		const char *eol = nl ? nl : body_end;
		size_t len = (size_t)(eol - q);
		if (xattr_line(q, len, &x, NULL) < 0 || (x.kind == 2 && !have_file))
			return fail(err, "damaged manifest (%s line \"%.*s\")", MKMA_XATTR_SECTION, (int)(len > 200 ? 200 : len), q);
		have_file |= x.kind == 1;
		q = eol + 1;
	}
	if (img->data_bytes != frame_start)
		return fail(err, "data is %llu bytes but the manifest says %llu (truncated or damaged)",
			    (unsigned long long)frame_start, (unsigned long long)img->data_bytes);
	if (img->data_bytes == 0) return fail(err, "the image holds no data (damaged)");
	if (img->nshards == 0) { /* no shard table: one stream of all frames */
		img->shards = malloc(sizeof *img->shards);
		if (!img->shards) return fail(err, "out of memory");
		img->shards[0] = (struct shard){ 0, img->data_bytes };
		img->nshards = 1;
	}
	/* the shards must tile DATA exactly */
	uint64_t pos = 0;
	for (size_t i = 0; i < img->nshards; i++) {
		if (img->shards[i].offset != pos || img->shards[i].length == 0 || img->shards[i].length > img->data_bytes - pos)
			return fail(err, "damaged manifest (shard %zu does not follow the previous one)", i + 1);
		pos += img->shards[i].length;
	}
	if (pos != img->data_bytes) return fail(err, "damaged manifest (shards do not cover the data)");
	return 0;
}

/* --- directories, at the end ------------------------------------------------------------ */

static int by_path(const void *a, const void *b) { return strcmp(((const struct dir_rec *)a)->path, ((const struct dir_rec *)b)->path); }

static int by_depth_desc(const void *a, const void *b)
{
	const struct dir_rec *x = a, *y = b;
	return (x->depth < y->depth) - (x->depth > y->depth);
}

/* Every directory entry's owner, mode and mtime, deepest first, each through a descriptor
 * opened O_DIRECTORY|O_NOFOLLOW beneath the target (skipped if it is no longer a directory:
 * it cannot be, the archive was refused then). A directory named twice is refused. */
static int apply_dirs(struct unpack *u, struct worker *ws, int nw)
{
	size_t total = 0;
	for (int i = 0; i < nw; i++) total += ws[i].dirs.n;
	struct dir_rec *all = malloc((total ? total : 1) * sizeof *all);
	if (!all) return fail(u->err, "out of memory");
	size_t k = 0;
	for (int i = 0; i < nw; i++)
		for (size_t j = 0; j < ws[i].dirs.n; j++) all[k++] = ws[i].dirs.v[j];
	qsort(all, total, sizeof *all, by_path);
	for (size_t i = 1; i < total; i++)
		if (strcmp(all[i].path, all[i - 1].path) == 0) {
			int rc = fail(u->err, "\"%s\" is in the archive twice", all[i].path);
			free(all);
			return rc;
		}
	qsort(all, total, sizeof *all, by_depth_desc);
	int rc = 0;
	for (size_t i = 0; i < total && rc == 0; i++) {
		const struct dir_rec *d = &all[i];
		int fd = open_beneath(u->destfd, d->path, O_RDONLY | O_DIRECTORY);
		if (fd < 0) {
			if (errno == ENOTDIR || errno == ELOOP) continue;
			rc = fail(u->err, "%s: open: %s", d->path, strerror(errno));
			break;
		}
		/* "." is the target, which this process did not create */
		if (u->chown && (strcmp(d->path, ".") == 0 || !owner_is_ours(u, d->uid, d->gid)) && fchown(fd, d->uid, d->gid) < 0)
			rc = fail(u->err, "%s: chown: %s", d->path, strerror(errno));
		/* always: a directory may be a placeholder, or have inherited a setgid bit */
		if (rc == 0 && fchmod(fd, d->mode & 07777) < 0) rc = fail(u->err, "%s: chmod: %s", d->path, strerror(errno));
		struct timespec ts[2] = { { (time_t)d->mtime, 0 }, { (time_t)d->mtime, 0 } };
		if (rc == 0 && futimens(fd, ts) < 0) rc = fail(u->err, "%s: utimens: %s", d->path, strerror(errno));
		close(fd);
	}
	free(all);
	return rc;
}

/* --- the image file --------------------------------------------------------------------- */

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

/* Maps FILE and reads its manifest (errors through fail()). A FIFO or a directory is never
 * opened blocking: O_NONBLOCK, then it must be a regular file. */
static int map_image(struct image *img, const char *file, struct failure *err)
{
	memset(img, 0, sizeof *img);
	int fd = open(file, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		int e = errno;
		if (fd >= 0) close(fd);
		return fail(err, "%s", strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return fail(err, "not a regular file");
	}
	uint64_t size = (uint64_t)st.st_size;
	if (size < FOOTER_SIZE + 8) {
		close(fd);
		return fail(err, "too small to be an mkma image (%llu bytes)", (unsigned long long)size);
	}
	void *m = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED) return fail(err, "mmap: %s", strerror(errno));
	img->map = m;
	img->size = size;
	/* start reading the whole file now (storage I/O overlaps decompression) */
	madvise(m, (size_t)size, MADV_WILLNEED);
	return read_manifest(img, err);
}

static void unmap_image(struct image *img)
{
	if (img->map) munmap((void *)img->map, (size_t)img->size);
	free(img->shards);
	memset(img, 0, sizeof *img);
}

/* True when the directory has no entries besides "." and "..". */
static int dir_is_empty(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) return 0;
	char *names;
	unsigned char *types;
	long n = read_names(fd, &names, &types);
	close(fd);
	free(names);
	free(types);
	return n == 0;
}

/* Prepares an extraction into the empty directory destfd (owned by the caller). */
static int unpack_init(struct unpack *u, struct failure *err, int destfd, struct image *img)
{
	memset(u, 0, sizeof *u);
	u->err = err;
	u->destfd = destfd;
	u->img = img;
	u->euid = geteuid();
	u->egid = getegid();
	u->chown = u->euid == 0;
	struct stat st;
	if (fstat(destfd, &st) < 0) return fail(err, "cannot stat the target directory: %s", strerror(errno));
	if (!dir_is_empty(destfd)) return fail(err, "the target directory is not empty");
	u->owner_default = !(st.st_mode & S_ISGID);
	return 0;
}

/* Extracts the mapped image's shards with up to `jobs` threads, then applies the
 * directories' metadata and checks the entry count. Adds the counts to *entries etc. */
static int extract_image(struct unpack *u, long jobs, uint64_t *entries, uint64_t *bytes, uint64_t *cpio, int *threads)
{
	struct image *img = u->img;
	if (jobs == 0) jobs = online_cpus();
	int nw = (size_t)jobs < img->nshards ? (int)jobs : (int)img->nshards;
	struct worker *ws = calloc((size_t)nw, sizeof *ws);
	if (!ws) return fail(u->err, "out of memory");
	int started = 0, ready = 0;
	for (; ready < nw; ready++)
		if (worker_setup(&ws[ready], u) < 0) break;
	/* the main thread is worker 0 */
	for (int i = 1; i < ready && !failed(u->err); i++) {
		int e = pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]);
		if (e) {
			fail(u->err, "cannot start a thread: %s", strerror(e));
			break;
		}
		started = i;
	}
	if (!failed(u->err)) worker_main(&ws[0]);
	for (int i = 1; i <= started; i++) pthread_join(ws[i].thread, NULL);
	uint64_t n = 0;
	for (int i = 0; i < nw; i++) {
		n += ws[i].entries;
		*bytes += ws[i].file_bytes;
		*cpio += ws[i].cpio_bytes;
	}
	*entries += n;
	if (!failed(u->err) && n != img->entries)
		fail(u->err, "the manifest says %llu entries, the archive has %llu (damaged)", (unsigned long long)img->entries, (unsigned long long)n);
	if (!failed(u->err)) apply_dirs(u, ws, nw);
	for (int i = 0; i < nw; i++) worker_free(&ws[i]);
	free(ws);
	*threads = nw;
	return failed(u->err) ? -1 : 0;
}

/* --- layers (docs/FORMAT.md, "Applying a layer") ----------------------------------------- */

struct removal {
	int treefd;
	uint64_t removed;
	struct failure *err;
};

/* Rule 2: removes path from the tree: never through a symlinked (or non-directory) parent,
 * such a path does not exist in the layer's view. */
static int remove_path(const char *path, void *arg)
{
	struct removal *r = arg;
	char parent[NAME_LIMIT];
	const char *leaf;
	split_path(path, parent, sizeof parent, &leaf);
	int pfd = open_beneath(r->treefd, parent, O_PATH | O_DIRECTORY);
	if (pfd < 0) return 0;
	struct stat st;
	int there = fstatat(pfd, leaf, &st, AT_SYMLINK_NOFOLLOW) == 0;
	close(pfd);
	if (!there) return 0;
	if (remove_tree(r->treefd, path) < 0 && errno != ENOENT) return fail(r->err, "%s: cannot remove: %s", path, strerror(errno));
	r->removed++;
	return 0;
}

/* Rule 3, iteratively (a tree of any depth, a few descriptors at a time): stage's entries
 * into tree, top-down. A directory that is a directory on both sides is descended into and
 * then gets the staged owner, mode and times as they were extracted (chown first: it
 * clears setgid); anything else replaces what the tree has, by rename (hardlinks stay).
 * Every directory on both sides is opened beneath its root without following symlinks.
 * The staged directories are removed as they are emptied, so the stage ends empty. */
struct merge_frame {
	char *rel;
	struct stat ss; /* the staged directory, before anything was moved out of it */
	int expanded;
};

static int merge_tree(int sroot, int troot, struct failure *err, int do_chown)
{
	struct merge_frame *st = malloc(64 * sizeof *st);
	size_t n = 0, cap = 64;
	if (!st) return fail(err, "out of memory");
	st[n++] = (struct merge_frame){ strdup(""), { 0 }, 0 };
	int rc = st[0].rel ? 0 : fail(err, "out of memory");
	while (n && rc == 0) {
		struct merge_frame *f = &st[n - 1];
		const char *where = *f->rel ? f->rel : ".";
		if (f->expanded) {
			/* every child is merged: this directory's own metadata, then the empty stage dir */
			if (*f->rel) {
				int t2 = open_beneath(troot, f->rel, O_RDONLY | O_DIRECTORY);
				if (t2 >= 0) {
					struct stat ts;
					if (fstat(t2, &ts) < 0) rc = fail(err, "%s: stat: %s", where, strerror(errno));
					if (rc == 0 && do_chown && (f->ss.st_uid != ts.st_uid || f->ss.st_gid != ts.st_gid) && fchown(t2, f->ss.st_uid, f->ss.st_gid) < 0)
						rc = fail(err, "%s: chown: %s", where, strerror(errno));
					/* after a chown (which may clear setgid); not when nothing would change */
					if (rc == 0 && (((f->ss.st_mode ^ ts.st_mode) & 07777) || (ts.st_mode & 06000)) && fchmod(t2, f->ss.st_mode & 07777) < 0)
						rc = fail(err, "%s: chmod: %s", where, strerror(errno));
					struct timespec times[2] = { f->ss.st_atim, f->ss.st_mtim };
					if (rc == 0 && futimens(t2, times) < 0) rc = fail(err, "%s: utimens: %s", where, strerror(errno));
					close(t2);
				} else if (errno != ENOTDIR && errno != ELOOP) {
					rc = fail(err, "%s: open: %s", where, strerror(errno));
				}
				if (rc == 0) {
					char parent[NAME_LIMIT];
					const char *leaf;
					split_path(f->rel, parent, sizeof parent, &leaf);
					int sp = open_beneath(sroot, parent, O_PATH | O_DIRECTORY);
					if (sp < 0 || unlinkat(sp, leaf, AT_REMOVEDIR) < 0) rc = fail(err, "%s: rmdir (staged): %s", where, strerror(errno));
					if (sp >= 0) close(sp);
				}
			}
			free(f->rel);
			n--;
			continue;
		}
		f->expanded = 1;
		int sfd = open_beneath(sroot, f->rel, O_RDONLY | O_DIRECTORY);
		int tfd = sfd < 0 ? -1 : open_beneath(troot, f->rel, O_PATH | O_DIRECTORY);
		if (sfd < 0 || tfd < 0) {
			rc = fail(err, "%s: open: %s", where, strerror(errno));
			if (sfd >= 0) close(sfd);
			break;
		}
		char *names;
		unsigned char *types;
		long cnt = read_names(sfd, &names, &types);
		if (cnt < 0) rc = fail(err, "%s: cannot read the staged directory: %s", where, strerror(errno));
		const char *nm = names;
		char *parent_rel = f->rel; /* f may move when st grows */
		for (long i = 0; i < cnt && rc == 0; i++, nm += strlen(nm) + 1) {
			struct stat ss, ts;
			/* the staged entry's own stat only for a directory (its metadata, taken now) */
			int sdir = types[i] == DT_DIR;
			if ((sdir || types[i] == DT_UNKNOWN) && fstatat(sfd, nm, &ss, AT_SYMLINK_NOFOLLOW) < 0) {
				rc = fail(err, "%s/%s: stat (staged): %s", where, nm, strerror(errno));
				break;
			}
			if (types[i] == DT_UNKNOWN) sdir = S_ISDIR(ss.st_mode);
			int have = fstatat(tfd, nm, &ts, AT_SYMLINK_NOFOLLOW) == 0;
			if (sdir && have && S_ISDIR(ts.st_mode)) {
				if (n == cap) {
					cap *= 2;
					struct merge_frame *v = realloc(st, cap * sizeof *v);
					if (!v) {
						rc = fail(err, "out of memory");
						break;
					}
					st = v;
				}
				char *rel = join(parent_rel, nm);
				if (!rel) {
					rc = fail(err, "out of memory");
					break;
				}
				st[n++] = (struct merge_frame){ rel, ss, 0 };
				continue;
			}
			/* what the tree has there goes: unlinked in place, a directory with all in it */
			if (have && unlinkat(tfd, nm, S_ISDIR(ts.st_mode) ? AT_REMOVEDIR : 0) < 0 && remove_tree(tfd, nm) < 0 && errno != ENOENT) {
				rc = fail(err, "%s/%s: cannot replace: %s", where, nm, strerror(errno));
				break;
			}
			if (renameat(sfd, nm, tfd, nm) < 0) rc = fail(err, "%s/%s: rename: %s", where, nm, strerror(errno));
		}
		free(names);
		free(types);
		close(sfd);
		close(tfd);
	}
	while (n) free(st[--n].rel);
	free(st);
	return rc;
}

/* Rule 4: sets every attribute of the section, each path resolved beneath tree without
 * following symlinks (a final symlink is not followed either: lsetxattr relative to its
 * directory, as `setfattr -h --restore` would). A path that is not in the tree, and an
 * attribute the filesystem refuses, is a warning, printed as "warn NAME text" (the first
 * of them); the rest is still restored. */
static void restore_xattrs(struct image *img, int treefd, const char *label, const struct pathset *only)
{
	static unsigned char value[MKMA_XATTR_VALUE_LIMIT];
	static struct xattr_line x;
	char file[NAME_LIMIT] = "";
	int have_dir = 0, warned = 0;
	int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	for (const char *p = img->xattrs; p && p < img->body_end;) {
		const char *nl = memchr(p, '\n', (size_t)(img->body_end - p));
		const char *eol = nl ? nl : img->body_end;
		if (xattr_line(p, (size_t)(eol - p), &x, value) < 0) x.kind = 0; /* checked before */
		if (x.kind == 1 && only && strcmp(x.path, ".") != 0 && !ps_has(only, x.path)) {
			have_dir = 0; /* -t: not extracted, on purpose */
		} else if (x.kind == 1) {
			char parent[NAME_LIMIT];
			const char *leaf;
			snprintf(file, sizeof file, "%s", x.path);
			split_path(file, parent, sizeof parent, &leaf);
			int pfd = open_beneath(treefd, strcmp(file, ".") == 0 ? "" : parent, O_PATH | O_DIRECTORY);
			have_dir = pfd >= 0 && fchdir(pfd) == 0;
			if (pfd >= 0) close(pfd);
			struct stat st;
			if (have_dir && strcmp(file, ".") != 0 && fstatat(AT_FDCWD, leaf, &st, AT_SYMLINK_NOFOLLOW) < 0) have_dir = 0;
			if (!have_dir && !warned++)
				printf("%s %s extended attributes not restored: %s is not in the tree\n", MKMA_UNPACK_WARN, label, file);
			if (have_dir && strcmp(file, ".") != 0) memmove(file, leaf, strlen(leaf) + 1);
		} else if (x.kind == 2 && have_dir) {
			if (lsetxattr(file, x.name, value, (size_t)x.vlen, 0) < 0 && !warned++)
				printf("%s %s some extended attributes could not be restored: %s: %s: %s\n", MKMA_UNPACK_WARN, label, file, x.name, strerror(errno));
		}
		p = eol + 1;
	}
	if (cwd >= 0) {
		if (fchdir(cwd) < 0) { /* the original directory is gone: nothing relies on it */
		}
		close(cwd);
	}
}

/*
 * Layers are applied in two parts (docs/FORMAT.md, "Applying a layer"):
 *  1. extract_layer, in a child process per layer: the manifest is checked and the archive
 *     is extracted into the layer's own, new staging directory. Nothing here depends on the
 *     tree or on the other layers, so up to two children per CPU run ahead of the merging;
 *  2. merge_layer, in order, in the parent: removals, the merge by rename, the xattrs.
 * A layer whose child failed is skipped whole: the tree never saw it.
 */
static int extract_layer(const char *file, const char *stage, long jobs, uint64_t *entries, struct failure *err)
{
	uint64_t bytes = 0, cpio = 0;
	int threads;
	struct image img;
	struct unpack u;
	int rc = -1;
	if (map_image(&img, file, err) < 0) goto out;
	if (strcmp(img.kind, "layer") != 0) {
		fail(err, "not a layer (kind %s)", img.kind);
		goto out;
	}
	int sfd = -1;
	if ((remove_own(stage) < 0 && errno != ENOENT) || mkdir(stage, 0700) < 0 ||
	    (sfd = open(stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		fail(err, "cannot make the staging directory %s: %s", stage, strerror(errno));
		goto out;
	}
	if (unpack_init(&u, err, sfd, &img) == 0) rc = extract_image(&u, jobs, entries, &bytes, &cpio, &threads);
	close(sfd);
out:
	unmap_image(&img);
	return rc;
}

/* Part 2 for an extracted layer: 0 applied, 3 failed while changing the tree. */
static int merge_layer(const char *file, int treefd, const char *stage, uint64_t *removed, struct failure *err)
{
	struct image img;
	int rc = 3;
	/* the manifest again, here: its removal lines and xattrs (the child checked them) */
	if (map_image(&img, file, err) < 0) goto out;
	int sfd = open(stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0) {
		fail(err, "cannot open the staging directory %s: %s", stage, strerror(errno));
		goto out;
	}
	struct removal rm = { treefd, 0, err };
	int bad = each_removal(&img, remove_path, &rm) || merge_tree(sfd, treefd, err, geteuid() == 0);
	close(sfd);
	if (bad) goto out;
	*removed = rm.removed;
	const char *slash = strrchr(file, '/');
	restore_xattrs(&img, treefd, slash ? slash + 1 : file, NULL);
	rc = 0;
out:
	unmap_image(&img);
	return rc;
}

struct layer_job {
	pid_t pid;
	int msg; /* the child's report: "ENTRIES" or "!REASON", then EOF */
	char stage[PATH_MAX];
	char *error; /* the child could not be started */
};

static int start_layer_job(struct layer_job *j, const char *file, const char *stage, int i, long jobs, struct failure *err)
{
	int p[2];
	snprintf(j->stage, sizeof j->stage, "%s.%d", stage, i);
	if (pipe2(p, O_CLOEXEC) < 0) return fail(err, "pipe: %s", strerror(errno));
	fflush(stdout);
	pid_t parent = getpid();
	j->pid = fork();
	if (j->pid < 0) {
		close(p[0]);
		close(p[1]);
		return fail(err, "fork: %s", strerror(errno));
	}
	if (j->pid == 0) {
		/* dies with the parent: a killed mkma-unpack leaves no extraction running on */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent) _exit(1);
		close(p[0]);
		uint64_t entries = 0;
		char out[sizeof err->msg + 32];
		int rc = extract_layer(file, j->stage, jobs, &entries, err);
		int len = rc == 0 ? snprintf(out, sizeof out, "%llu", (unsigned long long)entries) : snprintf(out, sizeof out, "!%s", err->msg);
		if (write(p[1], out, (size_t)len) < 0) _exit(1);
		_exit(rc == 0 ? 0 : 1);
	}
	close(p[1]);
	j->msg = p[0];
	return 0;
}

/* Waits for the child; 0 with *entries, or -1 with the reason in err. */
static int finish_layer_job(struct layer_job *j, uint64_t *entries, struct failure *err)
{
	char buf[sizeof err->msg + 32];
	size_t len = 0;
	ssize_t n;
	while (len < sizeof buf - 1 && ((n = read(j->msg, buf + len, sizeof buf - 1 - len)) > 0 || (n < 0 && errno == EINTR)))
		if (n > 0) len += (size_t)n;
	buf[len] = '\0';
	close(j->msg);
	int st = 0;
	while (waitpid(j->pid, &st, 0) < 0 && errno == EINTR) {}
	failure_reset(err);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && len && buf[0] != '!') {
		*entries = strtoull(buf, NULL, 10);
		return 0;
	}
	if (len && buf[0] == '!') return fail(err, "%s", buf + 1);
	if (WIFSIGNALED(st)) return fail(err, "extracting it was killed by signal %d", WTERMSIG(st));
	return fail(err, "extracting it failed (exit status %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/*
 * -l TREE STAGE LAYER...: the layers in the order given (staging directories STAGE.0, STAGE.1,
 * …). On stdout, per layer, in order: "merge NAME" when the tree is about to change, any
 * "warn NAME text" lines, then one result line:
 *   ok NAME ENTRIES REMOVED | skip NAME REASON | partial NAME REASON
 * NAME is the file's base name. Exit 0 all applied, 1 some skipped, 3 some partly applied.
 */
static int apply_layers_main(const char *tree, const char *stage, char **files, int n, long jobs)
{
	static struct failure err = { .lock = PTHREAD_MUTEX_INITIALIZER };
	int treefd = open(tree, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (treefd < 0) {
		fprintf(stderr, "mkma-unpack: cannot open the tree %s: %s\n", tree, strerror(errno));
		return MKMA_UNPACK_EXIT_USAGE;
	}
	struct layer_job *js = calloc((size_t)(n ? n : 1), sizeof *js);
	if (!js) {
		fprintf(stderr, "mkma-unpack: out of memory\n");
		return MKMA_UNPACK_EXIT_USAGE;
	}
	/* children ahead of the merge: two per CPU (measured on 2 CPUs: one per CPU left the
	 * CPUs idle while the parent merged); -j N sets it */
	long ahead = jobs ? jobs : 2 * online_cpus();
	int started = 0, status = MKMA_UNPACK_EXIT_OK;
	for (int i = 0; i < n; i++) {
		const char *slash = strrchr(files[i], '/');
		const char *label = slash ? slash + 1 : files[i];
		/* each child extracts with one thread (layers are small: mostly one shard), a
		 * single layer with all of them */
		for (; started < n && started <= i + ahead - 1; started++) {
			failure_reset(&err);
			if (start_layer_job(&js[started], files[started], stage, started, n == 1 ? 0 : 1, &err) < 0) {
				js[started].pid = -1;
				js[started].error = strdup(err.msg);
			}
		}
		uint64_t entries = 0, removed = 0;
		int rc;
		if (js[i].pid < 0) {
			failure_reset(&err);
			fail(&err, "%s", js[i].error ? js[i].error : "out of memory");
			free(js[i].error);
			rc = 1;
		} else {
			rc = finish_layer_job(&js[i], &entries, &err) == 0 ? 0 : 1;
			if (rc == 0) {
				printf("%s %s\n", MKMA_UNPACK_MERGE, label);
				fflush(stdout);
				rc = merge_layer(files[i], treefd, js[i].stage, &removed, &err);
			}
			/* the stage goes in every case (empty after a merge); failing to remove it
			 * only matters when all went well */
			if (rmdir(js[i].stage) < 0 && errno != ENOENT && remove_own(js[i].stage) < 0 && errno != ENOENT &&
			    rc == 0) {
				failure_reset(&err);
				fail(&err, "cannot remove the staging directory %s: %s", js[i].stage, strerror(errno));
				rc = 3;
			}
		}
		if (rc == 0) printf("%s %s %llu %llu\n", MKMA_UNPACK_OK, label, (unsigned long long)entries, (unsigned long long)removed);
		else printf("%s %s %s\n", rc == 3 ? MKMA_UNPACK_PARTIAL : MKMA_UNPACK_SKIP, label, err.msg);
		int st = rc == 3 ? MKMA_UNPACK_EXIT_PARTIAL : rc ? MKMA_UNPACK_EXIT_FAILED : MKMA_UNPACK_EXIT_OK;
		if (st == MKMA_UNPACK_EXIT_PARTIAL || (st == MKMA_UNPACK_EXIT_FAILED && status == MKMA_UNPACK_EXIT_OK)) status = st;
		fflush(stdout);
	}
	free(js);
	close(treefd);
	return status;
}

/* One line per FILE: "ok KIND ENTRIES UNPACKED_BYTES DATA_BYTES" or "bad REASON". */
static int info_main(char **files, int n)
{
	static struct failure err = { .lock = PTHREAD_MUTEX_INITIALIZER };
	for (int i = 0; i < n; i++) {
		struct image img;
		failure_reset(&err);
		if (map_image(&img, files[i], &err) == 0) {
			printf("%s %s %llu %llu %llu\n", MKMA_UNPACK_OK, img.kind, (unsigned long long)img.entries,
			       (unsigned long long)img.unpacked, (unsigned long long)img.data_bytes);
		} else {
			printf("%s %s\n", MKMA_UNPACK_BAD, err.msg);
		}
		unmap_image(&img);
	}
	return fflush(stdout) == 0 ? MKMA_UNPACK_EXIT_OK : MKMA_UNPACK_EXIT_FAILED;
}

/* A plain cpio newc stream from fd into the empty directory destfd (one thread). */
static int extract_plain(struct unpack *u, int fd, uint64_t *entries, uint64_t *bytes, uint64_t *cpio)
{
	struct worker *w = calloc(1, sizeof *w);
	if (!w) return fail(u->err, "out of memory");
	if (worker_setup(w, u) == 0) {
		struct stream s = { .err = u->err, .fd = fd, .buf = w->buf };
		snprintf(s.what, sizeof s.what, "stdin");
		if (extract_stream(w, &s, 1) == 0) apply_dirs(u, w, 1);
		*entries += w->entries;
		*bytes += w->file_bytes;
		*cpio += w->cpio_bytes;
	}
	worker_free(w);
	free(w);
	return failed(u->err) ? -1 : 0;
}

static int touch_removal(const char *path, void *set)
{
	return safe_rel(path) && ps_add_with_parents(set, path) < 0 ? -1 : 0;
}

/* -t: every path the layer FILE touches, with the directories above it, added to set: its
 * entries, its removal paths (opaque, delete) and its %xattrs paths. Applying the layer
 * onto a tree reads or changes nothing else of it (docs/FORMAT.md, "Applying a layer"), so
 * a base extracted down to these paths gives the same result at every path the layer can
 * reach. Unsafe names are left out (applying the layer refuses it). 0, or -1 (recorded). */
static int collect_touched(const char *file, struct pathset *set, struct failure *err)
{
	struct image img;
	struct stream s = { .err = err };
	char *name = malloc(NAME_LIMIT);
	int rc = -1;
	s.buf = malloc(BUF_SIZE);
	s.dctx = ZSTD_createDCtx();
	if (!name || !s.buf || !s.dctx) {
		fail(err, "out of memory");
		goto out0;
	}
	if (map_image(&img, file, err) < 0) goto out;
	for (size_t i = 0; i < img.nshards; i++) {
		ZSTD_DCtx_reset(s.dctx, ZSTD_reset_session_only);
		s.in = img.map + img.shards[i].offset;
		s.in_len = (size_t)img.shards[i].length;
		s.in_pos = 0;
		s.frame_done = 0;
		s.eof = 0;
		s.start = s.end = 0;
		snprintf(s.what, sizeof s.what, "shard %zu of %zu", i + 1, img.nshards);
		for (;;) {
			int r = need(&s, MKMA_NEWC_HEADER_SIZE);
			if (r < 0) goto out;
			if (r == 0) break;
			struct header h;
			r = read_header(&s, &h, name);
			if (r < 0) goto out;
			if (r == 0) break; /* TRAILER!!! */
			const char *path = clean_name(name);
			if (path && ps_add_with_parents(set, path) < 0) {
				fail(err, "out of memory");
				goto out;
			}
			if (skip_data(&s, (uint64_t)h.size + pad4(h.size)) < 0) goto out;
		}
	}
	if (each_removal(&img, touch_removal, set)) {
		fail(err, "out of memory");
		goto out;
	}
	static struct xattr_line x;
	for (const char *p = img.xattrs; p && p < img.body_end;) {
		const char *nl = memchr(p, '\n', (size_t)(img.body_end - p));
		const char *eol = nl ? nl : img.body_end;
		if (xattr_line(p, (size_t)(eol - p), &x, NULL) == 0 && x.kind == 1 && ps_add_with_parents(set, x.path) < 0) {
			fail(err, "out of memory");
			goto out;
		}
		p = eol + 1;
	}
	rc = 0;
out:
	unmap_image(&img);
out0:
	if (s.dctx) ZSTD_freeDCtx(s.dctx);
	free(s.buf);
	free(name);
	return rc;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: mkma-unpack [-v] [-X] [-j N] [-t LAYER]... FILE DEST\n"
		"                                           extract an mkma image into the empty DEST\n"
		"                                           (shards in parallel)\n"
		"       mkma-unpack [-v] - DEST             extract a plain cpio newc stream from stdin\n"
		"       mkma-unpack -l TREE STAGE LAYER...  apply layers to TREE in order, each all or\n"
		"                                           nothing; per layer: merge NAME, then ok NAME\n"
		"                                           ENTRIES REMOVED or partial NAME REASON; or\n"
		"                                           skip NAME REASON\n"
		"       mkma-unpack -i FILE...              one line per image: ok KIND ENTRIES UNPACKED\n"
		"                                           DATA_BYTES, or bad REASON\n"
		"  -j N  threads (default: online CPUs)   -v  print a summary\n"
		"  -X    also restore the image's %%xattrs (failures: \"warn NAME text\" on stdout)\n"
		"  -t LAYER  only what LAYER touches: its entries' and removals' paths, the\n"
		"        directories above them, and every hardlinked file (repeatable; a LAYER that\n"
		"        cannot be read: \"warn NAME text\", and everything is extracted)\n");
}

int main(int argc, char **argv)
{
	long jobs = 0;
	int verbose = 0, layer = 0, info = 0, with_xattrs = 0, opt;
	char **touch = NULL;
	int ntouch = 0;
	while ((opt = getopt(argc, argv, "j:vhliXt:")) != -1) {
		switch (opt) {
		case 'j': {
			char *end;
			errno = 0;
			jobs = strtol(optarg, &end, 10);
			if (errno || *end || jobs < 1 || jobs > 1024) {
				fprintf(stderr, "mkma-unpack: -j wants a number from 1 to 1024\n");
				return MKMA_UNPACK_EXIT_USAGE;
			}
			break;
		}
		case 'v': verbose = 1; break;
		case 'l': layer = 1; break;
		case 'i': info = 1; break;
		case 'X': with_xattrs = 1; break;
		case 't': {
			char **v = realloc(touch, (size_t)(ntouch + 1) * sizeof *v);
			if (!v) {
				fprintf(stderr, "mkma-unpack: out of memory\n");
				return MKMA_UNPACK_EXIT_FAILED;
			}
			touch = v;
			touch[ntouch++] = optarg;
			break;
		}
		case 'h': usage(stdout); return MKMA_UNPACK_EXIT_OK;
		default: usage(stderr); return MKMA_UNPACK_EXIT_USAGE;
		}
	}
	umask(0);
	if (ntouch && (info || layer)) {
		usage(stderr);
		return MKMA_UNPACK_EXIT_USAGE;
	}
	if (info) {
		if (argc - optind < 1) {
			usage(stderr);
			return MKMA_UNPACK_EXIT_USAGE;
		}
		return info_main(argv + optind, argc - optind);
	}
	if (layer) {
		if (argc - optind < 2) {
			usage(stderr);
			return MKMA_UNPACK_EXIT_USAGE;
		}
		return apply_layers_main(argv[optind], argv[optind + 1], argv + optind + 2, argc - optind - 2, jobs);
	}
	if (argc - optind != 2 || (ntouch && strcmp(argv[optind], "-") == 0)) {
		usage(stderr);
		return MKMA_UNPACK_EXIT_USAGE;
	}
	static struct failure err = { .lock = PTHREAD_MUTEX_INITIALIZER };
	const char *file = argv[optind], *dest = argv[optind + 1];
	int from_stdin = strcmp(file, "-") == 0;
	const char *label = from_stdin ? "stdin" : file;
	double t0 = now();

	int destfd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (destfd < 0) {
		fprintf(stderr, "mkma-unpack: %s: cannot open the target directory %s: %s\n", label, dest, strerror(errno));
		return MKMA_UNPACK_EXIT_FAILED;
	}
	uint64_t entries = 0, bytes = 0, cpio = 0;
	int nw = 1;
	struct unpack u;
	struct image img = { 0 };
	if (from_stdin) {
		if (unpack_init(&u, &err, destfd, NULL) == 0) extract_plain(&u, 0, &entries, &bytes, &cpio);
	} else if (map_image(&img, file, &err) == 0 && unpack_init(&u, &err, destfd, &img) == 0) {
		static struct pathset only;
		static struct failure terr = { .lock = PTHREAD_MUTEX_INITIALIZER };
		for (int i = 0; i < ntouch; i++) {
			if (collect_touched(touch[i], &only, &terr) == 0) continue;
			const char *slash = strrchr(touch[i], '/');
			printf("%s %s cannot be read (%s): everything is extracted\n", MKMA_UNPACK_WARN, slash ? slash + 1 : touch[i], terr.msg);
			ps_free(&only);
			ntouch = 0;
		}
		if (ntouch) u.only = &only;
		if (extract_image(&u, jobs, &entries, &bytes, &cpio, &nw) == 0 && with_xattrs) {
			const char *slash = strrchr(file, '/');
			restore_xattrs(&img, destfd, slash ? slash + 1 : file, u.only);
		}
		ps_free(&only);
	}
	free(touch);
	unmap_image(&img);
	close(destfd);
	if (failed(&err)) {
		fprintf(stderr, "mkma-unpack: %s: %s\n", label, err.msg);
		return MKMA_UNPACK_EXIT_FAILED;
	}
	if (verbose) {
		double sec = now() - t0;
		printf("mkma-unpack: %s: %llu entries, %llu bytes of file data (%llu of cpio) in %.3f s, %.1f MB/s, %d thread%s\n",
		       label, (unsigned long long)entries, (unsigned long long)bytes, (unsigned long long)cpio, sec,
		       sec > 0 ? (double)cpio / 1e6 / sec : 0.0, nw, nw == 1 ? "" : "s");
	}
	return MKMA_UNPACK_EXIT_OK;
}
