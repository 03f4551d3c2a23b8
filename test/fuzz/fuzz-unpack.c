/*
 * libFuzzer target for mkma-unpack (init/unpack/mkma-unpack.c), built with ASan and UBSan by
 * test/integration/fuzz.test.ts (clang -fsanitize=fuzzer,address,undefined, and the contract
 * header with -include), seeded with the conformance corpus (test/conformance/).
 *
 * Each input is taken three ways, as the boot takes images:
 *   1. an mkma image (manifest, shards) extracted into an empty directory with two threads,
 *      its %xattrs restored (mkma-unpack -X); then the paths it reaches listed as a layer's
 *      (-t, collect_touched) and the image extracted again only that far;
 *   2. if it is a layer: extracted into a staging directory and merged into a small tree,
 *      removals and xattrs included (mkma-unpack -l, without the child process);
 *   3. a plain cpio stream (mkma-unpack -).
 * Besides memory errors and undefined behaviour, anything written outside the directories
 * it was given is a finding: a sentinel directory beside them must stay exactly as it was,
 * and the sandbox must hold nothing else.
 */
#define main mkma_unpack_main
#include "../../init/unpack/mkma-unpack.c"
#undef main

static char g_root[PATH_MAX];
static int g_rootfd = -1;
static struct failure g_err = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void die(const char *what)
{
	fprintf(stderr, "fuzz-unpack: %s: %s\n", what, strerror(errno));
	abort();
}

/* The sandbox holds: sentinel/ (never written), in (the input), and while an input runs t/,
 * stage/, tree/. */
static void check_sandbox(void)
{
	char *names;
	unsigned char *types;
	int fd = openat(g_rootfd, ".", O_RDONLY | O_DIRECTORY);
	long n = read_names(fd, &names, &types);
	close(fd);
	if (n < 0) die("read the sandbox");
	const char *nm = names;
	for (long i = 0; i < n; i++, nm += strlen(nm) + 1) {
		if (strcmp(nm, "sentinel") && strcmp(nm, "in")) {
			fprintf(stderr, "fuzz-unpack: %s/%s appeared beside the target: an extraction left its directory\n", g_root, nm);
			abort();
		}
	}
	free(names);
	free(types);
	struct stat st;
	fd = openat(g_rootfd, "sentinel", O_RDONLY | O_DIRECTORY);
	if (fd < 0 || fstat(fd, &st) < 0 || (st.st_mode & 07777) != 0755 || st.st_nlink != 2) die("the sentinel changed");
	n = read_names(fd, &names, &types);
	close(fd);
	if (n != 1 || strcmp(names, "f") != 0) {
		fprintf(stderr, "fuzz-unpack: the sentinel directory changed\n");
		abort();
	}
	free(names);
	free(types);
	if (fstatat(g_rootfd, "sentinel/f", &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) || st.st_size != 9 || (st.st_mode & 07777) != 0644)
		die("sentinel/f changed");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	umask(0);
	snprintf(g_root, sizeof g_root, "%s/mkma-fuzz-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(g_root)) die("mkdtemp");
	g_rootfd = open(g_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (g_rootfd < 0 || mkdirat(g_rootfd, "sentinel", 0755) < 0) die("sandbox");
	int fd = openat(g_rootfd, "sentinel/f", O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (fd < 0 || write(fd, "sentinel\n", 9) != 9) die("sentinel");
	close(fd);
	return 0;
}

static int fresh_dir(const char *name)
{
	remove_tree(g_rootfd, name);
	if (mkdirat(g_rootfd, name, 0755) < 0) die("mkdir");
	int fd = openat(g_rootfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) die("open");
	return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char in[PATH_MAX + 8];
	snprintf(in, sizeof in, "%s/in", g_root);
	int fd = open(in, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size)) die("write the input");
	close(fd);

	/* 1. an image (-X) */
	struct image img;
	struct unpack u;
	uint64_t entries = 0, bytes = 0, cpio = 0;
	int threads, kind_layer = 0;
	failure_reset(&g_err);
	int t = fresh_dir("t");
	if (map_image(&img, in, &g_err) == 0) {
		kind_layer = strcmp(img.kind, "layer") == 0;
		if (unpack_init(&u, &g_err, t, &img) == 0 && extract_image(&u, 2, &entries, &bytes, &cpio, &threads) == 0)
			restore_xattrs(&img, t, "in", NULL);
	}
	unmap_image(&img);
	close(t);
	remove_tree(g_rootfd, "t");

	/* 1b. -t: what it reaches as a layer, then itself extracted only that far */
	struct pathset only = { 0 };
	failure_reset(&g_err);
	if (collect_touched(in, &only, &g_err) == 0) {
		t = fresh_dir("t");
		entries = bytes = cpio = 0;
		if (map_image(&img, in, &g_err) == 0 && unpack_init(&u, &g_err, t, &img) == 0) {
			u.only = &only;
			if (extract_image(&u, 2, &entries, &bytes, &cpio, &threads) == 0) restore_xattrs(&img, t, "in", &only);
		}
		unmap_image(&img);
		close(t);
		remove_tree(g_rootfd, "t");
	}
	ps_free(&only);

	/* 2. a layer, merged into a small tree */
	if (kind_layer) {
		int tree = fresh_dir("tree");
		if (mkdirat(tree, "etc", 0755) < 0 || symlinkat("../sentinel", tree, "ln") < 0) die("tree");
		int f = openat(tree, "etc/hostname", O_WRONLY | O_CREAT | O_EXCL, 0644);
		if (f < 0) die("tree");
		close(f);
		char stage[PATH_MAX + 8];
		snprintf(stage, sizeof stage, "%s/stage", g_root);
		uint64_t removed = 0;
		entries = 0;
		failure_reset(&g_err);
		if (extract_layer(in, stage, 1, &entries, &g_err) == 0) merge_layer(in, tree, stage, &removed, &g_err);
		close(tree);
		remove_tree(g_rootfd, "stage");
		remove_tree(g_rootfd, "tree");
	}

	/* 3. a plain cpio stream */
	failure_reset(&g_err);
	t = fresh_dir("t");
	fd = open(in, O_RDONLY | O_CLOEXEC);
	if (fd < 0) die("open the input");
	entries = bytes = cpio = 0;
	if (unpack_init(&u, &g_err, t, NULL) == 0) extract_plain(&u, fd, &entries, &bytes, &cpio);
	close(fd);
	close(t);
	remove_tree(g_rootfd, "t");

	check_sandbox();
	return 0;
}
