# --- lib.sh: logging and failure handling -------------------------------------------------
# Every phase line has the uptime so that boots can be measured from the console log:
#   mkma[ 12.34]: phase <name> <text>
# They go to the console and, at debug priority (not echoed to the console twice), to the
# kernel log.

MKMA_DEBUG=${MKMA_DEBUG:-}
MKMA_ON_ERROR=${MKMA_ON_ERROR:-shell}

# read_uptime: the uptime ("S.SS") in UPTIME, without a process (no $(...): a command
# substitution forks, and phase lines come per layer).
read_uptime() {
	read -r UPTIME _idle </proc/uptime 2>/dev/null || UPTIME=0.00
}

# uptime_cs: the uptime in centiseconds in UPTIME_CS (for durations).
uptime_cs() {
	read_uptime
	_cs=${UPTIME#*.}
	# shellcheck disable=SC2034 # read by the callers
	UPTIME_CS=$((${UPTIME%.*} * 100 + ${_cs#0}))
}

# centi CS: "S.SS" for a number of centiseconds
centi() {
	_c=$(($1 % 100))
	[ "$_c" -lt 10 ] && _c="0$_c"
	# shellcheck disable=SC2034 # read by the callers
	CENTI="$(($1 / 100)).$_c"
}

to_kmsg() {
	# MKMA_NO_KMSG: the standalone mkma-apply on a host must not write into the host's log
	[ -z "${MKMA_NO_KMSG:-}" ] && [ -w /dev/kmsg ] && printf '<7>%s\n' "$1" >/dev/kmsg 2>/dev/null
	return 0
}

log() {
	read_uptime
	_line="mkma[$UPTIME]: $*"
	printf '%s\n' "$_line"
	to_kmsg "$_line"
}

phase() {
	log "phase $*"
}

debug() {
	[ -n "$MKMA_DEBUG" ] && log "debug $*"
	return 0
}

warn() {
	log "WARNING $*"
}

# --- the kernel command line -------------------------------------------------------------
# The kernel's whitespace (lib/ctype.c isspace): \t \n \v \f \r, space, and the byte 0xa0.
KERNEL_WS=$(printf '\t\n\v\f\r\240 ')

# read_cmdline FILE: /proc/cmdline whole in CMDLINE (a quoted value may hold a newline),
# without the newline the kernel adds at its end (inside an unterminated quote it would
# become part of the last value).
read_cmdline() {
	CMDLINE='' _sep=''
	while IFS= read -r _line || [ -n "$_line" ]; do
		CMDLINE="$CMDLINE$_sep$_line"
		_sep='
'
	done <"$1"
}

# kernel_params FUNCTION TEXT: splits a kernel command line into parameters exactly as Linux
# does (lib/cmdline.c next_arg, kernel/params.c parse_args; the rules are spelled out in
# lib/cmdline.ts, which `mkma persist` uses, and test/fixtures/cmdline-vectors.json holds both
# parsers to them) and calls `FUNCTION KEY` for a flag, `FUNCTION KEY VALUE` for key=value.
# Double quotes may enclose whitespace, also starting before the key ("key=a b"); keys have
# - turned into _; a bare -- ends the kernel's parameters. No subshell, no external command.
kernel_params() {
	_kp_fn=$1
	_kp_rest=$2
	while :; do
		_kp_rest=${_kp_rest#"${_kp_rest%%[!"$KERNEL_WS"]*}"}
		[ -n "$_kp_rest" ] || return 0
		_kp_tok='' _kp_quoted='' _kp_inq=''
		case $_kp_rest in \"*) _kp_rest=${_kp_rest#?} _kp_quoted=1 _kp_inq=1 ;; esac
		# the parameter: up to whitespace outside quotes; a quote toggles "inside quotes"
		while [ -n "$_kp_rest" ]; do
			if [ -n "$_kp_inq" ]; then
				_kp_chunk=${_kp_rest%%\"*}
			else
				_kp_chunk=${_kp_rest%%[\""$KERNEL_WS"]*}
			fi
			_kp_tok=$_kp_tok$_kp_chunk
			_kp_rest=${_kp_rest#"$_kp_chunk"}
			case $_kp_rest in
			'') break ;;
			\"*)
				_kp_tok=$_kp_tok\" _kp_rest=${_kp_rest#?}
				if [ -n "$_kp_inq" ]; then _kp_inq=''; else _kp_inq=1; fi
				;;
			*)
				_kp_rest=${_kp_rest#?}
				break
				;;
			esac
		done
		# the key ends at the first = that is not the parameter's first character
		_kp_haseq='' _kp_cut=''
		case $_kp_tok in
		?*=*)
			_kp_haseq=1
			_kp_val=${_kp_tok#?}
			_kp_key=${_kp_tok%"$_kp_val"}${_kp_val%%=*}
			_kp_val=${_kp_val#*=}
			# a value starting with a quote loses it, and a quote at the parameter's end
			case $_kp_val in
			\"*)
				_kp_val=${_kp_val#?}
				case $_kp_val in
				'') _kp_cut=1 ;;
				*\") _kp_val=${_kp_val%?} _kp_cut=1 ;;
				esac
				;;
			esac
			;;
		*) _kp_key=$_kp_tok ;;
		esac
		# a parameter starting with a quote loses a quote at its end (unless cut just above)
		if [ -n "$_kp_quoted" ] && [ -z "$_kp_cut" ]; then
			if [ -n "$_kp_haseq" ]; then
				case $_kp_val in *\") _kp_val=${_kp_val%?} ;; esac
			else
				case $_kp_key in *\") _kp_key=${_kp_key%?} ;; esac
			fi
		fi
		[ -z "$_kp_haseq" ] && [ "$_kp_key" = -- ] && return 0
		while :; do
			case $_kp_key in
			*-*) _kp_key=${_kp_key%%-*}_${_kp_key#*-} ;;
			*) break ;;
			esac
		done
		[ -n "$_kp_key" ] || continue
		if [ -n "$_kp_haseq" ]; then
			"$_kp_fn" "$_kp_key" "$_kp_val"
		else
			"$_kp_fn" "$_kp_key"
		fi
	done
}

# uint TEXT MAXDIGITS: TEXT as a decimal number in UINT (leading zeros dropped: shell
# arithmetic reads 010 as octal and fails on 08), or status 1 if TEXT is not digits only or
# longer than MAXDIGITS (arithmetic would overflow). Arithmetic on an unchecked value can abort
# the shell: as PID 1, a kernel panic.
uint() {
	case $1 in '' | *[!0-9]*) return 1 ;; esac
	UINT=$1
	while :; do
		case $UINT in
		0?*) UINT=${UINT#0} ;;
		*) break ;;
		esac
	done
	[ ${#UINT} -le "$2" ]
}

# mount_overlay WHAT TARGET LOWER [UPPER WORK]: an overlayfs on TARGET, or a fatal error naming
# WHAT. With UPPER: writable, with redirect_dir and metacopy off, so the upperdir stays
# self-describing (`mkma persist` saves it as a plain layer; base_format's middle directory
# holds plain whiteouts). Without: a read-only view of LOWER.
mount_overlay() {
	if [ $# -ge 5 ]; then
		_ov="lowerdir=$3,upperdir=$4,workdir=$5,redirect_dir=off,metacopy=off"
	else
		_ov="ro,lowerdir=$3"
	fi
	mount -t overlay overlay -o "$_ov" "$2" 2>"$MKMA_TMP/mount.err" && return 0
	fatal "cannot mount $1: $(cat "$MKMA_TMP/mount.err")" "is the overlay module in the initramfs?"
	return 1
}

# fatal WHAT HINT: an essential step failed; say what and what to check, then act on
# mkma_on_error (shell|reboot|halt).
fatal() {
	log "FATAL $1"
	[ -n "${2:-}" ] && log "hint: $2"
	case $MKMA_ON_ERROR in
	reboot)
		log "rebooting in 10 s (mkma_on_error=reboot)"
		sleep 10
		reboot -f
		;;
	halt)
		log "halting (mkma_on_error=halt)"
		poweroff -f
		;;
	*)
		log "starting a shell (mkma_on_error=shell); exit it to retry switch_root"
		setsid cttyhack sh || sh
		;;
	esac
	return 1
}
