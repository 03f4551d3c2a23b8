# --- layer-busybox.sh: the layer code when mkma-unpack could not be built -----------------
# busybox cpio extracts, the shell removes and merges, setfattr restores xattrs: the rules of
# docs/FORMAT.md, as mkma-unpack and format/apply.ts apply them (test/conformance/).
#
# busybox cpio cannot be told to stay in its directory, so it never gets the chance to leave
# it: each image is extracted inside a sandbox (SB): a new directory bind-mounted onto itself
# with nosymfollow (no symlink is ever followed in it), holding a copy of the static busybox
# and the target t/, and cpio runs chrooted into it. Before that, the archive's listing
# (`cpio -tv`) is checked against the rules mkma-unpack applies (names, each once, nothing
# below a non-directory); afterwards, the sandbox must hold nothing but t/ and busybox, and t/
# exactly as many entries as the manifest counts (busybox lists no zero-size hardlink member:
# those are checked by that count and by the sandbox). cpio saying anything but its final
# "N blocks" is a failure. What busybox cannot show (inode numbers, header spellings) is in
# docs/FORMAT.md, "The busybox fallback".

# The manifest's checks (format/manifest.ts: parseManifestBody, readManifest), in one awk
# over the body: prints "ok KIND ENTRIES UNPACKED DATA_BYTES" and the shard table ("shard
# OFFSET LENGTH" lines), or "bad REASON". DATA: the size of the data before the manifest.
# shellcheck disable=SC2016 # awk's $0, not the shell's
MANIFEST_AWK='
function num(v) { return v ~ /^(0|[1-9][0-9]*)$/ && length(v) <= ND }
function oct3(s) { return substr(s, 1, 1) * 64 + substr(s, 2, 1) * 8 + substr(s, 3, 1) }
function safe(p,   n, a, i) {
	if (p == "" || length(p) >= NL) return 0
	n = split(p, a, "/")
	for (i = 1; i <= n; i++) if (a[i] == "" || a[i] == "." || a[i] == "..") return 0
	return substr(p, length(p), 1) != "/"
}
# escapePath (opaque/delete): \\ and \0ooo; sets BADESC on anything else or a NUL
function unesc(v,   out, i, c, o, k) {
	out = ""
	for (i = 1; i <= length(v); i++) {
		c = substr(v, i, 1)
		if (c != "\\") { out = out c; continue }
		if (substr(v, i + 1, 1) == "\\") { out = out "\\"; i++; continue }
		o = substr(v, i + 1, 4)
		if (o !~ /^0[0-3][0-7][0-7]$/ || oct3(substr(o, 2)) == 0) { BADESC = 1; return "" }
		out = out sprintf("%c", oct3(substr(o, 2))); i += 4
	}
	return out
}
# getfattr (%xattrs): \ooo only
function ungf(v,   out, i, c, o) {
	out = ""
	for (i = 1; i <= length(v); i++) {
		c = substr(v, i, 1)
		if (c != "\\") { out = out c; continue }
		o = substr(v, i + 1, 3)
		if (o !~ /^[0-3][0-7][0-7]$/ || oct3(o) == 0) { BADESC = 1; return "" }
		out = out sprintf("%c", oct3(o)); i += 3
	}
	return out
}
function hbad(r) { if (HB == "") HB = r }
function xbad(r) { if (XB == "") XB = XS " line \"" substr($0, 1, 200) "\": " r }
NR == 1 { if ($0 != "mkma-manifest " VER) hbad("unsupported or damaged manifest header"); next }
!X && $0 == XS { X = 1; next }
!X {
	sp = index($0, " "); k = sp ? substr($0, 1, sp - 1) : $0; v = sp ? substr($0, sp + 1) : ""
	if (k == "kind") {
		if (kind != "") hbad("damaged manifest (kind twice)")
		else if (v != "base" && v != "layer") hbad("damaged manifest (unknown kind)")
		else kind = v
	} else if (k == "entries" || k == "unpacked_bytes" || k == "data_bytes") {
		if ((k in seen) || !num(v)) hbad("damaged manifest (" k ")")
		seen[k] = v
	} else if (k == "shard") {
		if (split(v, a, " ") != 2 || !num(a[1]) || !num(a[2]) || v != a[1] " " a[2]) hbad("damaged manifest (shard line)")
		else { so[++ns] = a[1] + 0; sl[ns] = a[2] + 0 }
	} else if (k == "opaque" || k == "delete") {
		BADESC = 0; p = unesc(v)
		if (BADESC || length(p) >= NL) hbad("damaged manifest (bad or too long path in \"" substr($0, 1, 200) "\")")
		else if (!safe(p)) hbad("unsafe path in manifest: " p)
	}
	next
}
$0 == "" { next }
substr($0, 1, 8) == "# file: " {
	BADESC = 0; p = ungf(substr($0, 9))
	if (BADESC) xbad("bad escape"); else if (p != "." && !safe(p)) xbad("unsafe path")
	file = 1; next
}
{
	eq = index($0, "=")
	if (!file) { xbad("an attribute before any \"# file:\" line"); next }
	if (eq <= 1) { xbad("not NAME=VALUE"); next }
	BADESC = 0; n = ungf(substr($0, 1, eq - 1))
	if (BADESC || length(n) > XN) { xbad("bad name"); next }
	v = substr($0, eq + 1); len = -1
	if (v ~ /^0[xX]([0-9a-fA-F][0-9a-fA-F])*$/) len = (length(v) - 2) / 2
	else if (v ~ /^0[sS]([A-Za-z0-9+\/][A-Za-z0-9+\/][A-Za-z0-9+\/][A-Za-z0-9+\/])*([A-Za-z0-9+\/][A-Za-z0-9+\/]==|[A-Za-z0-9+\/][A-Za-z0-9+\/][A-Za-z0-9+\/]=)?$/) {
		len = (length(v) - 2) / 4 * 3
		if (v ~ /==$/) len -= 2; else if (v ~ /=$/) len -= 1
	}
	if (len < 0 || len > XV) xbad("bad value (0x… or 0s…)")
}
END {
	if (NR == 0) HB = "unsupported or damaged manifest header"
	if (HB != "") { print "bad " HB; exit }
	if (kind == "" || !("entries" in seen) || !("unpacked_bytes" in seen) || !("data_bytes" in seen)) { print "bad manifest lacks kind/entries/unpacked_bytes/data_bytes (damaged)"; exit }
	if (!X) { print "bad manifest has no " XS " section (damaged)"; exit }
	if (XB != "") { print "bad damaged manifest (" XB ")"; exit }
	d = seen["data_bytes"] + 0
	if (d != DATA + 0) { print "bad data is " DATA " bytes but the manifest says " d " (truncated or damaged)"; exit }
	if (d == 0) { print "bad the image holds no data (damaged)"; exit }
	if (ns == 0) { ns = 1; so[1] = 0; sl[1] = d }
	pos = 0
	for (i = 1; i <= ns; i++) {
		if (so[i] != pos || sl[i] == 0 || sl[i] > d - pos) { print "bad damaged manifest (shard " i " does not follow the previous one)"; exit }
		pos += sl[i]
	}
	if (pos != d) { print "bad damaged manifest (shards do not cover the data)"; exit }
	print "ok " kind " " seen["entries"] " " seen["unpacked_bytes"] " " d
	for (i = 1; i <= ns; i++) printf "shard %.0f %.0f\n", so[i], sl[i]
}'

# read_manifest FILE [OUT]: writes FILE's manifest body to OUT (default $MKMA_TMP/manifest)
# and checks it; fails with $M_ERROR when the file is truncated, damaged or not an mkma
# image. Sets M_KIND M_ENTRIES M_UNPACKED M_DATA_BYTES, and $MKMA_TMP/shards.
read_manifest() {
	M_ERROR=''
	_out=${2:-$MKMA_TMP/manifest}
	if [ ! -f "$1" ]; then
		M_ERROR="not a regular file"
		return 1
	fi
	_size=$(stat -L -c %s "$1" 2>/dev/null) || { M_ERROR="cannot read"; return 1; }
	if [ "$_size" -lt $((FOOTER_SIZE + 8)) ]; then
		M_ERROR="too small to be an mkma image ($_size bytes)"
		return 1
	fi
	_footer=$(tail -c "$FOOTER_SIZE" "$1")
	case $_footer in
	"$FOOTER_TAG"*) ;;
	*)
		M_ERROR="no manifest at its end (truncated, or not an mkma image)"
		return 1
		;;
	esac
	# right-aligned digits, no leading zero (the shell would read one as octal)
	_len=${_footer#"$FOOTER_TAG"}
	_len=${_len##* }
	case ${_footer#"$FOOTER_TAG"} in
	*[!0-9\ ]* | *[!\ ]*\ * | '' | *" 0"* | 0*) _len=x ;;
	esac
	if ! is_number "$_len" || [ "$_len" -le 0 ] || [ "$_len" -gt $((_size - FOOTER_SIZE - 8)) ]; then
		M_ERROR="damaged manifest footer"
		return 1
	fi
	# the skippable frame's header: magic and the length of what follows
	# shellcheck disable=SC2046 # splitting od's output into bytes is intended
	set -- "$1" "$_out" $(tail -c $((_len + FOOTER_SIZE + 8)) "$1" | head -c 8 | od -An -tu1)
	if [ "$3 $4 $5 $6" != "$SKIPPABLE_MAGIC_BYTES" ] ||
		[ $(($7 + 256 * $8 + 65536 * $9 + 16777216 * ${10})) -ne $((_len + FOOTER_SIZE)) ]; then
		M_ERROR="manifest frame header is damaged"
		return 1
	fi
	tail -c $((_len + FOOTER_SIZE)) "$1" | head -c "$_len" >"$2"
	# a NUL byte (which awk cannot see) makes the manifest damaged, as in mkma-unpack
	if [ "$(tr -d '\000' <"$2" | wc -c)" -ne "$_len" ]; then
		M_ERROR="damaged manifest (a NUL byte)"
		return 1
	fi
	LC_ALL=C awk -v ND="$FMT_NUMBER_DIGITS" -v NL="$FMT_NAME_LIMIT" -v XS="$XATTR_SECTION" -v VER="$FMT_MANIFEST_VERSION" \
		-v XN="$FMT_XATTR_NAME_LIMIT" -v XV="$FMT_XATTR_VALUE_LIMIT" -v DATA=$((_size - 8 - _len - FOOTER_SIZE)) \
		"$MANIFEST_AWK" <"$2" >"$MKMA_TMP/shards"
	# shellcheck disable=SC2034 # M_DATA_BYTES: read by main.sh
	read -r _ok M_KIND M_ENTRIES M_UNPACKED M_DATA_BYTES <"$MKMA_TMP/shards"
	if [ "$_ok" != ok ]; then
		read -r _line <"$MKMA_TMP/shards"
		M_ERROR=${_line#bad }
		return 1
	fi
	return 0
}

# The listing's checks, in archive order, as mkma-unpack meets the same entries: input is
# `cpio -tv` of every shard; an entry's line starts with its mode string, owner, size and
# date, and any other line continues the previous name (a name with a newline). Prints "ok
# VISIBLE IMPLICIT DOT" (entries listed, directories only implied by names, 1 if "." is
# one of the entries) or "bad REASON".
# shellcheck disable=SC2016 # awk's $0, not the shell's
LISTING_AWK='
function safe(p,   n, a, i) {
	if (p == "" || length(p) >= NL) return 0
	n = split(p, a, "/")
	for (i = 1; i <= n; i++) if (a[i] == "" || a[i] == "." || a[i] == "..") return 0
	return 1
}
function bad(r) { if (B == "") B = r }
function entry(raw, t,   n, p, k, parts, m, i) {
	V++
	if (B != "") return
	if (raw == ".") {
		if (t != "d") bad("the archive\047s root entry \".\" is not a directory")
		else if (DOT++) DUP = DUP ? DUP : "\".\" is in the archive twice"
		return
	}
	n = substr(raw, 1, 2) == "./" ? substr(raw, 3) : raw
	if (!safe(n)) { bad("unsafe name in the archive: \"" raw "\""); return }
	if (t == "s") { bad(n ": unsupported entry type 014 (a socket)"); return }
	if (t !~ /^[-dlcbp]$/) { bad(n ": unsupported entry type"); return }
	m = split(n, parts, "/"); p = ""
	for (i = 1; i < m; i++) {
		p = p == "" ? parts[i] : p "/" parts[i]
		if (p in made) { if (made[p] != "d") { bad("\"" n "\" lies below \"" p "\", which is not a directory"); return } }
		else { made[p] = "d"; implied[p] = 1 }
	}
	if (n in made) {
		if (made[n] == "d" && t == "d") { if (!(n in implied)) DUP = DUP ? DUP : "\"" n "\" is in the archive twice"; delete implied[n]; return }
		if (made[n] == "d") bad("\"" n "\" is not a directory, but the archive also has it as a directory or has entries below it")
		else bad("\"" n "\" is in the archive twice")
		return
	}
	made[n] = t
}
function flush() { if (have) { if (t == "l") { k = index(text, " -> "); if (k) text = substr(text, 1, k - 1) } entry(text, t) } have = 0 }
{
	if (match($0, /^[-dlcbps?][-rwxsStT][-rwxsStT][-rwxsStT][-rwxsStT][-rwxsStT][-rwxsStT][-rwxsStT][-rwxsStT][-rwxsStT] [^ ]+\/[^ ]+ +[0-9]+ [0-9]+-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9] /)) {
		flush(); have = 1; t = substr($0, 1, 1); text = substr($0, RLENGTH + 1)
	} else if (have) text = text "\n" $0
	else bad("unexpected cpio listing line \"" $0 "\"")
}
END {
	flush()
	if (B == "" && DUP != "") B = DUP
	if (B != "") { print "bad " B; exit }
	for (p in implied) I++
	print "ok " V + 0 " " I + 0 " " DOT + 0
}'

# shard_stream FILE OFFSET LENGTH: the decompressed shard on stdout; zstd's failure goes to
# $MKMA_TMP/zstd.status (no pipefail in POSIX sh).
shard_stream() {
	tail -c +$(($2 + 1)) "$1" | head -c "$3" | { zstd -q -dc || echo "$?" >"$MKMA_TMP/zstd.status"; }
}

# cpio_quiet ERRFILE LAST: cpio's stderr must be empty, or (the last shard) one "N blocks".
cpio_quiet() {
	if [ "$2" = last ]; then
		[ "$(wc -l <"$1")" -eq 1 ] && grep -q '^[0-9][0-9]* blocks$' "$1"
	else
		[ ! -s "$1" ]
	fi
}

# extract FILE SB: the image (its manifest read by read_manifest, shards in
# $MKMA_TMP/shards) into SB/t inside a new sandbox SB (see the top of this file); SB must not
# exist. Fails with $M_ERROR. The caller removes SB (sandbox_remove).
extract() {
	case $1 in
	/*) _file=$1 ;;
	*) _file=$PWD/$1 ;;
	esac
	_sb=$2
	rm -f "$MKMA_TMP/zstd.status"
	# the listing, every shard: it must follow the rules before anything is written
	: >"$MKMA_TMP/listing"
	_n=$(grep -c '^shard ' "$MKMA_TMP/shards")
	_i=0
	while read -r _w _off _len; do
		[ "$_w" = shard ] || continue
		_i=$((_i + 1))
		_last=; [ "$_i" -eq "$_n" ] && _last=last
		shard_stream "$_file" "$_off" "$_len" | TZ=UTC0 cpio -tv >>"$MKMA_TMP/listing" 2>"$MKMA_TMP/cpio.err"
		if [ -e "$MKMA_TMP/zstd.status" ]; then
			M_ERROR="zstd could not decompress it (corrupt or truncated data)"
			return 1
		fi
		if ! cpio_quiet "$MKMA_TMP/cpio.err" "$_last"; then
			M_ERROR="cpio: $(head -n 1 "$MKMA_TMP/cpio.err")"
			[ -s "$MKMA_TMP/cpio.err" ] || M_ERROR="the archive ends without TRAILER!!! (truncated)"
			grep -q '^[0-9][0-9]* blocks$' "$MKMA_TMP/cpio.err" && [ -z "$_last" ] && M_ERROR="TRAILER!!! before the last shard (damaged)"
			return 1
		fi
	done <"$MKMA_TMP/shards"
	LC_ALL=C awk -v NL="$FMT_NAME_LIMIT" "$LISTING_AWK" <"$MKMA_TMP/listing" >"$MKMA_TMP/listing.check"
	read -r _ok _visible _implied _dot <"$MKMA_TMP/listing.check"
	if [ "$_ok" != ok ]; then
		read -r _line <"$MKMA_TMP/listing.check"
		M_ERROR=${_line#bad }
		return 1
	fi
	sandbox_make "$_sb" || return 1
	_i=0
	while read -r _w _off _len; do
		[ "$_w" = shard ] || continue
		_i=$((_i + 1))
		_last=; [ "$_i" -eq "$_n" ] && _last=last
		shard_stream "$_file" "$_off" "$_len" |
			chroot "$_sb" /busybox sh -c 'cd /t && exec /busybox cpio -i -d -m' 2>"$MKMA_TMP/cpio.err"
		if [ -e "$MKMA_TMP/zstd.status" ] || ! cpio_quiet "$MKMA_TMP/cpio.err" "$_last"; then
			M_ERROR="cpio: $(head -n 1 "$MKMA_TMP/cpio.err")"
			[ -e "$MKMA_TMP/zstd.status" ] && M_ERROR="zstd could not decompress it (corrupt or truncated data)"
			umount "$_sb" 2>/dev/null
			return 1
		fi
	done <"$MKMA_TMP/shards"
	umount "$_sb" 2>/dev/null
	# nothing beside t/ and busybox: a name busybox could not show (a zero-size hardlink member)
	# that left t/ is refused here
	set -- "$_sb"/* "$_sb"/.[!.]* "$_sb"/..?*
	_k=0
	for _f; do
		[ -e "$_f" ] || [ -L "$_f" ] || continue
		case ${_f##*/} in t | busybox) _k=$((_k + 1)) ;; *) _k=99 ;; esac
	done
	if [ "$_k" -ne 2 ]; then
		M_ERROR="unsafe name in the archive (a hardlink member outside the target)"
		return 1
	fi
	_have=$(find "$_sb/t" -mindepth 1 -print0 | tr -cd '\000' | wc -c)
	if [ "$_have" -ne $((M_ENTRIES - _dot + _implied)) ]; then
		M_ERROR="the manifest says $M_ENTRIES entries, the archive has others (damaged, or a hardlink member named twice)"
		return 1
	fi
	return 0
}

# sandbox_make SB: SB/t (the target) and SB/busybox (the static busybox), SB bind-mounted onto
# itself with nosymfollow.
sandbox_make() {
	# the busybox binary on PATH (`command -v` may answer with the applet's bare name)
	_bb=
	_rest=$PATH:
	while [ -n "$_rest" ] && [ -z "$_bb" ]; do
		[ -x "${_rest%%:*}/busybox" ] && _bb=${_rest%%:*}/busybox
		_rest=${_rest#*:}
	done
	if [ -z "$_bb" ]; then
		M_ERROR="busybox is not on PATH"
		return 1
	fi
	if ! mkdir "$1" || ! mkdir "$1/t" || ! cp "$_bb" "$1/busybox"; then
		M_ERROR="cannot make the sandbox $1"
		return 1
	fi
	if ! mount --bind "$1" "$1" 2>"$MKMA_TMP/mount.err" ||
		! mount -o remount,bind,nosymfollow "$1" 2>>"$MKMA_TMP/mount.err"; then
		umount "$1" 2>/dev/null
		M_ERROR="cannot set up the extraction sandbox: $(tail -n 1 "$MKMA_TMP/mount.err")"
		return 1
	fi
}

sandbox_remove() {
	umount "$1" 2>/dev/null
	rm -rf "$1"
}

# apply_removals TREE MANIFEST: rule 2, every `opaque` and `delete` path leaves the tree, in
# the manifest's order, never through a symlinked parent. Sets M_REMOVED.
apply_removals() {
	M_REMOVED=0
	while IFS= read -r _line; do
		case $_line in
		"opaque "* | "delete "*) ;;
		"$XATTR_SECTION") break ;;
		*) continue ;;
		esac
		decode "${_line#* }"
		parents_are_dirs "$1" "$DECODED" || continue
		if [ -e "$1/$DECODED" ] || [ -L "$1/$DECODED" ]; then
			rm -rf "${1:?}/$DECODED"
			M_REMOVED=$((M_REMOVED + 1))
		fi
	done <"$2"
}

# copy_dir_meta FROM TO: owner, then mode (chown clears setgid), then mtime; TO is a real
# directory (merge_dir checked it), FROM too.
copy_dir_meta() {
	chown "$(stat -c %u:%g "$1")" "$2"
	chmod "$(stat -c %a "$1")" "$2"
	touch -r "$1" "$2"
}

# merge_dir STAGE TREE: rule 3, top-down; globs (not find | read) so any byte in a name is safe.
merge_dir() {
	local s t
	for s in "$1"/* "$1"/.[!.]* "$1"/..?*; do
		[ -e "$s" ] || [ -L "$s" ] || continue
		t="$2/${s##*/}"
		if [ -d "$s" ] && [ ! -L "$s" ] && [ -d "$t" ] && [ ! -L "$t" ]; then
			merge_dir "$s" "$t"
			copy_dir_meta "$s" "$t"
		else
			if [ -e "$t" ] || [ -L "$t" ]; then
				rm -rf "$t"
			fi
			mv "$s" "$t"
		fi
	done
}

# restore_xattrs TREE MANIFEST LABEL: rule 4. Only records whose path is in the tree (every
# parent a real directory) go to setfattr -h --restore; the first that is not, and setfattr's
# complaint, are warnings.
restore_xattrs() {
	sed -n "/^$XATTR_SECTION\$/,\$p" "$2" | tail -n +2 >"$MKMA_TMP/xattrs"
	grep -q '^# file: ' "$MKMA_TMP/xattrs" || return 0
	# each record's path, in printf %b's spelling (\ooo → \0ooo), numbered
	awk 'substr($0, 1, 8) == "# file: " { n++; p = substr($0, 9); gsub(/\\/, "\\0", p); print n " " p }' \
		"$MKMA_TMP/xattrs" >"$MKMA_TMP/xattr.paths"
	: >"$MKMA_TMP/xattr.ok"
	_warned=
	while IFS= read -r _line; do
		decode "${_line#* }"
		if [ "$DECODED" = . ] || { parents_are_dirs "$1" "$DECODED" && { [ -e "$1/$DECODED" ] || [ -L "$1/$DECODED" ]; }; }; then
			printf '%s\n' "${_line%% *}" >>"$MKMA_TMP/xattr.ok"
		elif [ -z "$_warned" ]; then
			warn "$3: extended attributes not restored: $DECODED is not in the tree"
			_warned=1
		fi
	done <"$MKMA_TMP/xattr.paths"
	awk 'NR == FNR { ok[$1] = 1; next } substr($0, 1, 8) == "# file: " { n++ } n && (n in ok)' \
		"$MKMA_TMP/xattr.ok" "$MKMA_TMP/xattrs" >"$MKMA_TMP/xattrs.checked"
	grep -q '^# file: ' "$MKMA_TMP/xattrs.checked" || return 0
	(cd "$1" && setfattr -h --restore="$MKMA_TMP/xattrs.checked") 2>"$MKMA_TMP/setfattr.err" || {
		[ -n "$_warned" ] || warn "$3: some extended attributes could not be restored: $(tail -n 1 "$MKMA_TMP/setfattr.err")"
	}
}

# unpack_base FILE TREE: the base image into the empty TREE (extracted in a sandbox beside
# it, then moved into place).
unpack_base() {
	read_manifest "$1" "$MKMA_TMP/base.manifest" || return 1
	if [ "$M_KIND" != base ]; then
		M_ERROR="not a base image (kind $M_KIND)"
		return 1
	fi
	sandbox_remove "$2.sb"
	if ! extract "$1" "$2.sb" || ! rmdir "$2" || ! mv "$2.sb/t" "$2"; then
		[ -n "$M_ERROR" ] || M_ERROR="cannot move the extracted tree to $2"
		sandbox_remove "$2.sb"
		return 1
	fi
	sandbox_remove "$2.sb"
	restore_xattrs "$2" "$MKMA_TMP/base.manifest" "${1##*/}"
}

# apply_layer FILE TREE STAGE: all or nothing. Everything that can fail (manifest, listing,
# zstd checksums, cpio) happens in the sandbox STAGE before the tree is touched. Sets
# M_ENTRIES, M_REMOVED.
apply_layer() {
	sandbox_remove "$3"
	if ! read_manifest "$1" "$MKMA_TMP/layer.manifest"; then
		return 1
	fi
	if [ "$M_KIND" != layer ]; then
		M_ERROR="not a layer (kind $M_KIND)"
		return 1
	fi
	if ! extract "$1" "$3"; then
		sandbox_remove "$3"
		return 1
	fi
	apply_removals "$2" "$MKMA_TMP/layer.manifest"
	merge_dir "$3/t" "$2"
	restore_xattrs "$2" "$MKMA_TMP/layer.manifest" "${1##*/}"
	sandbox_remove "$3"
	return 0
}

# apply_layers DIR TREE STAGE: the layers of DIR this boot applies (boot_layers) onto TREE, in order; a
# phase line per applied layer, "LAYER SKIPPED NAME: reason" for the others. Sets
# M_APPLIED and M_SKIPPED.
apply_layers() {
	M_APPLIED=0
	M_SKIPPED=$(plan_damaged "$1") # layer_intact: skipped before they could be applied
	for _l in $(boot_layers "$1"); do
		if apply_layer "$1/$_l" "$2" "$3"; then
			layer_applied "$_l" "$M_ENTRIES" "$M_REMOVED"
		else
			layer_skipped "$_l" "$M_ERROR"
		fi
	done
	return 0
}

# layer_sizes DIR LAYER...: the sum of the layers' unpacked sizes in M_LAYERS_UNPACKED;
# unreadable layers count 0 (they are skipped later, with the reason).
layer_sizes() {
	M_LAYERS_UNPACKED=0
	_dir=$1
	shift
	for _l; do
		if read_manifest "$_dir/$_l" "$MKMA_TMP/size.manifest"; then
			M_LAYERS_UNPACKED=$((M_LAYERS_UNPACKED + M_UNPACKED))
		fi
	done
}
