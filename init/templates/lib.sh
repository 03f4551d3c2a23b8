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
