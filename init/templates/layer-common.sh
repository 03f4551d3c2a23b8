# --- layer-common.sh: what both variants of the init's layer code share -------------------
# The format and the rules are docs/FORMAT.md. The build emits this file, then ONE of
# layer-native.sh (the initramfs carries mkma-unpack) or layer-busybox.sh (it could not be
# built: busybox cpio, sandboxed), never both: init/generate.ts decides, not the boot.
# Generated constants (lib/contract.ts): FOOTER_TAG, FOOTER_SIZE, XATTR_SECTION, LAYER_*,
# FMT_*, UNPACK_* (mkma-unpack's protocol words) and UNPACK_EXIT_* (its exit statuses).
# busybox ash: `local` is supported.
# shellcheck disable=SC3043

is_number() {
	case $1 in
	'' | *[!0-9]*) return 1 ;;
	esac
	return 0
}

# manifest_body FILE: prints FILE's manifest body (nothing when the footer is not there). Only
# the end of the file is read (tail).
manifest_body() {
	_f=$(tail -c "$FOOTER_SIZE" "$1" 2>/dev/null) || return 0
	case $_f in "$FOOTER_TAG"*) ;; *) return 0 ;; esac
	_n=${_f#"$FOOTER_TAG"}
	uint "${_n##* }" 9 || return 0
	tail -c $((UINT + FOOTER_SIZE)) "$1" | head -c "$UINT"
}

# image_data_sha256 FILE: prints the data_sha256 of FILE's manifest (nothing when it has none).
# The base's is written to boot.env: `mkma persist` records it in each layer as the base the
# layer was written on (docs/FORMAT.md, base_data_sha256).
image_data_sha256() {
	manifest_body "$1" | sed -n 's/^data_sha256 \([0-9a-f]\{64\}\)$/\1/p' | head -n 1
}

# decode ESCAPED: sets DECODED to the raw path (\0ooo escapes, see escapePath in
# format/manifest.ts). A variable, not output: $(...) would strip a trailing newline.
decode() {
	DECODED=$(printf '%bx' "$1")
	DECODED=${DECODED%x}
}

# safe_rel PATH: a relative path that stays inside the tree (no /…, no . or .. components).
safe_rel() {
	case /$1/ in
	// | *//* | */./* | */../*) return 1 ;;
	esac
	return 0
}

# parents_are_dirs ROOT REL: true when every parent of REL under ROOT is a real directory.
# A path under a symlink does not exist in the layer's view; following it would reach
# something else.
parents_are_dirs() {
	_p=$1
	_rest=$2
	while :; do
		case $_rest in
		*/*) ;;
		*) return 0 ;;
		esac
		_p="$_p/${_rest%%/*}"
		_rest=${_rest#*/}
		if [ -L "$_p" ] || [ ! -d "$_p" ]; then
			return 1
		fi
	done
}

# record WORD NAME [REASON]: what this boot did with a layer, for `mkma layers` (MKMA_RECORD:
# /run/mkma/layers in the init; lines "applied NAME" / "skipped NAME REASON").
record() {
	printf '%s\n' "$*" >>"${MKMA_RECORD:-$MKMA_TMP/layers}"
}

layer_applied() {
	phase layer-applied "$1 ($2 entries, $3 removed)"
	record applied "$1"
	M_APPLIED=$((M_APPLIED + 1))
}

# Loud: on the console and in the kernel log, so that it is noticed after boot.
layer_skipped() {
	log "LAYER SKIPPED $1: $2"
	record skipped "$1" "$2"
	M_SKIPPED=$((M_SKIPPED + 1))
}

# layer_state NAME: a layer's file name read (format/names.ts parseLayerName, docs/FORMAT.md
# "Layer names and states"): persistence.ID[@STATE].cpio.zst into L_ID, L_STATUS (active,
# disabled, trial, failed), L_LEFT and L_DONE (tries left and made), L_PINNED (1 or empty).
# Status 1: not a layer name (an unknown state included: never applied).
layer_state() {
	case $1 in "$LAYER_PREFIX"*"$LAYER_SUFFIX") ;; *) return 1 ;; esac
	L_ID=${1#"$LAYER_PREFIX"}
	L_ID=${L_ID%"$LAYER_SUFFIX"}
	L_STATUS=active L_LEFT=0 L_DONE=0 L_PINNED=''
	case $L_ID in
	*"$STATE_SEPARATOR"*)
		_st=${L_ID#*"$STATE_SEPARATOR"}
		L_ID=${L_ID%%"$STATE_SEPARATOR"*}
		case $_st in
		"$STATE_PINNED") _st=$STATE_PINNED L_PINNED=1 ;;
		*"$STATE_FLAG_SEPARATOR$STATE_PINNED")
			_st=${_st%"$STATE_FLAG_SEPARATOR$STATE_PINNED"} L_PINNED=1
			[ "$_st" = "$STATE_PINNED" ] && return 1
			;;
		esac
		case $_st in
		"$STATE_PINNED") ;;
		"$STATE_DISABLED") L_STATUS=disabled ;;
		"$STATE_TRIAL"-[0-9]-[0-9])
			_st=${_st#"$STATE_TRIAL"-}
			L_STATUS=trial L_LEFT=${_st%-*} L_DONE=${_st#*-}
			;;
		"$STATE_FAILED"-[0-9]) L_STATUS=failed L_DONE=${_st#"$STATE_FAILED"-} ;;
		*) return 1 ;;
		esac
		;;
	esac
	case $L_ID in
	'' | [!0-9A-Za-z]* | *[!0-9A-Za-z._+-]*) return 1 ;;
	esac
	return 0
}

# layer_name ID STATUS LEFT DONE PINNED: the file name of a layer in that state, in L_NAME
# (format/names.ts layerFileName).
layer_name() {
	case $2 in
	disabled) _st=$STATE_DISABLED ;;
	trial) _st="$STATE_TRIAL-$3-$4" ;;
	failed) _st="$STATE_FAILED-$4" ;;
	*) _st='' ;;
	esac
	if [ -n "$5" ]; then _st="${_st:+$_st$STATE_FLAG_SEPARATOR}$STATE_PINNED"; fi
	L_NAME="$LAYER_PREFIX$1${_st:+$STATE_SEPARATOR$_st}$LAYER_SUFFIX"
}

# rename_layer DIR OLD NEW: rename(2), atomic: a crash leaves OLD or NEW. Never over an
# existing file. (The caller syncs before anything relies on it.)
rename_layer() {
	if [ -e "$1/$3" ] || [ -L "$1/$3" ]; then
		warn "cannot rename $2 to $3: $3 exists" >&2
		return 1
	fi
	mv "$1/$2" "$1/$3" 2>"$MKMA_TMP/mv.err" && return 0
	warn "cannot rename $2 to $3: $(cat "$MKMA_TMP/mv.err")" >&2
	return 1
}

# sort_layers DIR: layer file names in natural order of their ids (format/names.ts: naturalKey;
# the state after the id does not move a layer), one per line, whatever their state. Names
# outside the layer pattern are not layers, and neither is anything but a regular file (a FIFO
# would block whoever opens it): both are reported, not applied. A layer superseded by a
# compacted one (format/compacted.ts: its range within the compacted layer's LAST+from+FIRST)
# is reported and left out.
sort_layers() {
	# no layers (a fresh machine): no awk/sort/cut processes
	set -- "$1" "$1"/"$LAYER_PREFIX"*"$LAYER_SUFFIX"
	[ -e "$2" ] || [ -L "$2" ] || return 0
	for _f in "$1"/"$LAYER_PREFIX"*"$LAYER_SUFFIX"; do
		_n=${_f##*/}
		if ! layer_state "$_n"; then
			warn "ignoring $_n: not a layer name" >&2
			continue
		fi
		if [ ! -f "$_f" ]; then
			warn "ignoring $_n: not a regular file" >&2
			continue
		fi
		printf '%s\n' "$_n"
	done | awk '
	function nkey(s,   key, d) {
		key = ""
		while (match(s, /[0-9]+/)) {
			d = substr(s, RSTART, RLENGTH); sub(/^0+/, "", d); if (d == "") d = "0"
			while (length(d) < 20) d = "0" d
			key = key substr(s, 1, RSTART - 1) d; s = substr(s, RSTART + RLENGTH)
		}
		return key s
	}
	{
		id = substr($0, length(P) + 1); id = substr(id, 1, length(id) - length(S))
		i = index(id, A); if (i) id = substr(id, 1, i - 1)
		lo = id; hi = id; c = 0; at = index(id, M)
		if (at > 1 && at + length(M) <= length(id)) {
			rest = substr(id, at + length(M))
			if (index(rest, M) == 0) { hi = substr(id, 1, at - 1); lo = rest; c = 1 }
		}
		print nkey(id) "\t" nkey(lo) "\t" nkey(hi) "\t" c "\t" $0
	}' P="$LAYER_PREFIX" S="$LAYER_SUFFIX" M="$COMPACT_MARK" A="$STATE_SEPARATOR" | sort | awk -F '\t' '
	{ n++; lo[n] = $2 ""; hi[n] = $3 ""; c[n] = $4; name[n] = $5 }
	END {
		for (i = 1; i <= n; i++) {
			s = 0
			for (j = 1; j <= n && !s; j++)
				if (j != i && c[j] == 1 && (lo[j] "") <= (lo[i] "") && (hi[i] "") <= (hi[j] "")) s = j
			if (s) print "\t" name[i] "\t" name[s]; else print name[i]
		}
	}' | while IFS= read -r _l; do
		case $_l in
		"	"*)
			_l=${_l#"	"}
			warn "ignoring ${_l%%"	"*}: superseded by ${_l#*"	"} (a compaction was interrupted after its new layer was complete)" >&2
			;;
		*) printf '%s\n' "$_l" ;;
		esac
	done
}

# boot_layers DIR: the layers this boot applies, in order, one per line: decided once
# (plan_layers: its renames happen once, each layer's data is hashed once) and kept in
# $MKMA_TMP/plan.
boot_layers() {
	if [ ! -f "$MKMA_TMP/plan" ]; then
		plan_layers "$1" >"$MKMA_TMP/plan"
		verified_phase >&2
	fi
	cat "$MKMA_TMP/plan"
}

# count_tries: when a layer on trial is in $IMAGES, the storage ($STORAGE) is remounted
# read-write for the plan's renames (plan_layers: one try spent, or failed), synced, and
# remounted read-only, before anything is applied. A storage that cannot be written: said,
# and the layers on trial are applied without counting.
count_tries() {
	[ "$MKMA_LAYERS" != none ] || return 0
	set -- "$IMAGES/$LAYER_PREFIX"*"$STATE_SEPARATOR$STATE_TRIAL"-*"$LAYER_SUFFIX"
	[ -e "$1" ] || return 0
	[ ! -f "$MKMA_TMP/plan" ] || return 0
	if mount -o remount,rw "$STORAGE" 2>"$MKMA_TMP/mount.err"; then
		MKMA_COUNT_TRIES=1
		boot_layers "$IMAGES" >/dev/null
		sync
		mount -o remount,ro "$STORAGE" 2>"$MKMA_TMP/mount.err" || warn "could not remount $DEVICE read-only: $(cat "$MKMA_TMP/mount.err")"
	else
		warn "cannot mount $DEVICE read-write to count the tries of layers on trial ($(cat "$MKMA_TMP/mount.err")): applying them without counting"
	fi
	MKMA_COUNT_TRIES=''
}

# plan_layers DIR: which layers this boot applies (printed, in order) and why each other one
# is not (recorded): its state (disabled, failed), $KEY_LAYERS= (none, N: the first N
# layers the states allow, until=ID: up to that layer), or another file with the same id.
# With MKMA_COUNT_TRIES=1 (the init, the storage briefly read-write) a layer on trial spends
# a try first: renamed to one try fewer and applied, or, with none left (no boot with it was
# marked good), to failed and skipped. Without (a read-only storage, mkma-apply), nothing is
# renamed: a layer with tries left is applied, one without is skipped.
plan_layers() {
	_pdir=$1 _k=0 _seen=' ' _cut='' _mode=${MKMA_LAYERS:-all}
	_layers=$(sort_layers "$_pdir")
	case $_mode in
	none) _cut="$KEY_LAYERS=none" ;;
	until=*)
		_found=''
		for _n in $_layers; do
			layer_state "$_n" && [ "$L_ID" = "${_mode#until=}" ] && _found=1
		done
		if [ -z "$_found" ]; then
			warn "$KEY_LAYERS=$_mode: no such layer: booting the base alone" >&2
			_cut="$KEY_LAYERS=$_mode: no such layer"
		fi
		;;
	esac
	for _n in $_layers; do
		layer_state "$_n"
		case $_seen in
		*" $L_ID "*)
			layer_skipped "$_n" "another file holds the same layer" >&2
			continue
			;;
		esac
		_seen="$_seen$L_ID "
		if [ -n "$_cut" ]; then
			record skipped "$_n" "$_cut"
			continue
		fi
		[ "$_mode" = "until=$L_ID" ] && _cut="after $KEY_LAYERS=$_mode"
		case $L_STATUS in
		disabled)
			record skipped "$_n" disabled
			continue
			;;
		failed)
			record skipped "$_n" "failed ($L_DONE tries)"
			continue
			;;
		trial)
			if [ "$L_LEFT" -eq 0 ]; then
				layer_name "$L_ID" failed 0 "$L_DONE" "$L_PINNED"
				if [ -n "${MKMA_COUNT_TRIES:-}" ] && rename_layer "$_pdir" "$_n" "$L_NAME"; then
					log >&2 "LAYER FAILED $L_ID: no boot with it was marked good in $L_DONE tries: skipped from now on (mkma layers bless $L_ID to accept it)"
					_n=$L_NAME
				fi
				record skipped "$_n" "failed ($L_DONE tries)"
				continue
			fi
			;;
		esac
		case $_mode in
		[0-9]*)
			if [ "$_k" -ge "$_mode" ]; then
				record skipped "$_n" "beyond $KEY_LAYERS=$_mode"
				continue
			fi
			;;
		esac
		_k=$((_k + 1))
		# a damaged layer counts for mkma_layers=N (it was asked for) but spends no try
		layer_intact "$_pdir" "$_n" || continue
		if [ "$L_STATUS" = trial ] && [ -n "${MKMA_COUNT_TRIES:-}" ]; then
			layer_name "$L_ID" trial $((L_LEFT - 1)) $((L_DONE + 1)) "$L_PINNED"
			if rename_layer "$_pdir" "$_n" "$L_NAME"; then
				log >&2 "layer $L_ID on trial: try $((L_DONE + 1)) of $((L_LEFT + L_DONE))"
				_n=$L_NAME
			fi
		fi
		printf '%s\n' "$_n"
	done
}

# --- integrity at boot: $KEY_VERIFY= (docs/FORMAT.md "Integrity at boot") ----------------------
# zstd's frame checksums catch a flipped byte only in a frame written with one; the sha256 of
# DATA (the manifest's data_sha256) also catches frames swapped or replaced whole, and a file cut
# where a frame ends. With MKMA_VERIFY=1 ($KEY_VERIFY=1 on the kernel command line) it is checked
# for every layer the boot is about to apply, before anything of it is applied or a try spent.
V_COUNT=0 V_BYTES=0 V_CS=0

# layer_intact DIR NAME: true unless NAME's data does not match its manifest's data_sha256;
# then it is skipped by name ("damaged", on the console and in the record). A layer whose
# manifest cannot be read, or has no data_sha256, is not judged here: the apply step's manifest
# checks name what is wrong with the first; the second is applied as before (zstd's checksums).
layer_intact() {
	[ "${MKMA_VERIFY:-0}" = 1 ] || return 0
	uptime_cs
	_v0=$UPTIME_CS
	# one process for both values; the body's first of each counts (docs/FORMAT.md)
	# shellcheck disable=SC2046 # two words (digits, hex digits) or fewer
	set -- "$1/$2" "$2" $(manifest_body "$1/$2" | awk '
		$1 == "data_bytes" && b == "" { b = $2 }
		$1 == "data_sha256" && h == "" { h = $2 }
		END { print b, h }')
	case ${4-} in '' | *[!0-9a-f]*) return 0 ;; esac
	uint "$3" 15 && [ "${#4}" -eq 64 ] || return 0
	_got=$(head -c "$UINT" "$1" | sha256sum)
	uptime_cs
	V_COUNT=$((V_COUNT + 1)) V_BYTES=$((V_BYTES + UINT)) V_CS=$((V_CS + UPTIME_CS - _v0))
	[ "${_got%% *}" = "$4" ] && return 0
	printf '%s\n' "$2" >>"$MKMA_TMP/damaged"
	layer_skipped "$2" "damaged: its data does not match the data_sha256 of its manifest (mkma verify names what is wrong; mkma layers remove drops it)" >&2
	return 1
}

# plan_damaged DIR: how many layers this boot's plan (boot_layers) left out as damaged, for
# apply_layers' count of skipped layers (the plan is made first if it was not).
plan_damaged() {
	boot_layers "$1" >/dev/null
	if [ -f "$MKMA_TMP/damaged" ]; then wc -l <"$MKMA_TMP/damaged"; else echo 0; fi
}

# verified_phase: how much the layers' check cost at this boot, as a phase line.
verified_phase() {
	[ "$V_COUNT" -gt 0 ] || return 0
	centi "$V_CS"
	phase layers-verified "$V_COUNT layer(s), $((V_BYTES / 1048576)) MiB, checked in $CENTI s ($KEY_VERIFY=0 skips it)"
}
