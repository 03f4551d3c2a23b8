# --- main.sh: the boot ------------------------------------------------------------------
# Generated at build time (from the image kernel's modules.dep and modules.alias):
# MKMA_MODULES_STORAGE and MKMA_MODULES_OVERLAY (load order), fs_modules TYPE, match_storage
# MODALIAS; and MKMA_DEFAULT_RAM_SIZE, MKMA_DEVICE_TIMEOUT.

STORAGE=$RT_STORAGE_MOUNT
ROOT=$RT_OVERLAY
MKMA_TMP=$RT_INIT_TMP
MKMA_RECORD=$RT_LAYERS_RECORD
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount_pseudo() {
	# applet links (mount, cpio, switch_root, …); real binaries already there are kept
	/usr/bin/busybox --install -s
	mkdir -p /dev /proc /sys /run "$STORAGE" "$ROOT"
	mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev 2>/dev/null
	mount -t proc -o nosuid,nodev,noexec proc /proc
	mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
	mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
	mkdir -p "$MKMA_TMP"
}

# parse_cmdline TEXT: the mkma_* parameters (the README's table) into MKMA_*. Every value is
# checked before anything uses it; a bad one is reported and its default kept. The device and
# the images path have no default: mount_storage refuses bad ones, saying why.
parse_cmdline() {
	MKMA_DEVICE=
	MKMA_IMAGES_PATH=/
	MKMA_RAM_SIZE=$MKMA_DEFAULT_RAM_SIZE
	MKMA_BREAK=
	MKMA_BASE_NAME=$BASE_NAME
	MKMA_LAYERS=all
	# each layer's data_sha256 (layer_intact in layer-common.sh): off unless asked for; it costs
	# more than applying the layer (docs/FORMAT.md "Integrity at boot"), and zstd's checksums in
	# mkma's frames already catch a changed byte
	MKMA_VERIFY=0
	# nor may environment variables (the kernel passes unknown key=value parameters to init
	# as such)
	if uint "${MKMA_ALL_STORAGE_AFTER:-3}" 4; then MKMA_ALL_STORAGE_AFTER=$UINT; else MKMA_ALL_STORAGE_AFTER=3; fi
	case $MKMA_ON_ERROR in shell | reboot | halt) ;; *) MKMA_ON_ERROR=shell ;; esac
	kernel_params cmdline_param "$1"
}

# cmdline_param KEY [VALUE]: one parameter (kernel_params calls it).
cmdline_param() {
	case $1 in
	"$KEY_STORAGE_DEVICE") [ $# -eq 2 ] && MKMA_DEVICE=$2 ;;
	"$KEY_IMAGES_PATH") [ $# -eq 2 ] && MKMA_IMAGES_PATH=$2 ;;
	"$KEY_RAM_SIZE")
		if [ $# -eq 2 ] && ram_size_ok "$2"; then
			MKMA_RAM_SIZE=$2
		else
			warn "$1=${2-} is not a RAM filesystem size (a percentage of RAM from 1% to 100%, or a size such as 4G): using $MKMA_RAM_SIZE"
		fi
		;;
	"$KEY_ON_ERROR")
		case ${2-} in
		shell | reboot | halt) MKMA_ON_ERROR=$2 ;;
		*) warn "$1=${2-} is not shell, reboot or halt: using $MKMA_ON_ERROR" ;;
		esac
		;;
	"$KEY_DEVICE_TIMEOUT")
		if [ $# -eq 2 ] && uint "$2" 6; then
			MKMA_DEVICE_TIMEOUT=$UINT
		else
			warn "$1=${2-} is not a whole number of seconds: waiting ${MKMA_DEVICE_TIMEOUT}s"
		fi
		;;
	"$KEY_BASE")
		# a stick's generations (mkma install): base.g<N>.cpio.zst beside base.cpio.zst; a file
		# name in the images directory, never a path
		case ${2-} in
		'' | .* | *[!A-Za-z0-9._-]*) warn "$1=${2-} is not a file name in the images directory: using $MKMA_BASE_NAME" ;;
		*) MKMA_BASE_NAME=$2 ;;
		esac
		;;
	"$KEY_LAYERS")
		# all (default); none: the base alone, the recovery entry of a boot menu (a layer that
		# breaks the boot is left out without touching the storage); N: the first N layers;
		# until=ID (or a layer's file name): up to that layer (plan_layers in layer-common.sh)
		case ${2-} in
		all | none) MKMA_LAYERS=$2 ;;
		[0-9] | [0-9][0-9] | [0-9][0-9][0-9]) uint "$2" 3 && MKMA_LAYERS=$UINT ;;
		until=?*)
			if layer_state "${2#until=}" || layer_state "$LAYER_PREFIX${2#until=}$LAYER_SUFFIX"; then
				MKMA_LAYERS="until=$L_ID"
			else
				warn "$1=$2: ${2#until=} is not a layer name: applying $MKMA_LAYERS layers"
			fi
			;;
		*) warn "$1=${2-} is not all, none, a number of layers or until=NAME: applying $MKMA_LAYERS layers" ;;
		esac
		;;
	"$KEY_VERIFY") cmdline_flag "$@" && MKMA_VERIFY=${FLAG:-0} ;;
	"$KEY_DEBUG") cmdline_flag "$@" && MKMA_DEBUG=$FLAG ;;
	"$KEY_BREAK") cmdline_flag "$@" && MKMA_BREAK=$FLAG ;;
	esac
}

# cmdline_flag KEY [VALUE]: KEY or KEY=1 sets FLAG=1, KEY=0 clears it; anything else is reported.
cmdline_flag() {
	case $#:${2-} in
	1: | 2:1) FLAG=1 ;;
	2:0) FLAG='' ;;
	*)
		warn "$1=$2: give $1 alone (or $1=1 / $1=0); ignored"
		return 1
		;;
	esac
}

# ram_size_ok TEXT: a tmpfs size= as mkma.toml's ram_size takes it: 1%..100%, or digits
# with an optional K, M or G (nothing else may reach the mount options).
ram_size_ok() {
	case $1 in
	[1-9]% | [1-9][0-9]% | 100%) return 0 ;;
	[1-9]*) ;;
	*) return 1 ;;
	esac
	case ${1%[KMGkmg]} in
	*[!0-9]*) return 1 ;;
	esac
	return 0
}

# storage_problem: why MKMA_DEVICE / MKMA_IMAGES_PATH cannot be used (in PROBLEM), or status 1.
storage_problem() {
	PROBLEM=''
	case $MKMA_DEVICE in
	*[[:cntrl:]]*) PROBLEM="$KEY_STORAGE_DEVICE= holds control characters" ;;
	/dev/?* | UUID=?* | LABEL=?* | PARTUUID=?* | PARTLABEL=?*) ;;
	*) PROBLEM="$KEY_STORAGE_DEVICE=$MKMA_DEVICE is not /dev/…, UUID=…, LABEL=…, PARTUUID=… or PARTLABEL=…" ;;
	esac
	case /$MKMA_IMAGES_PATH/ in
	*[[:cntrl:]]*) PROBLEM="$KEY_IMAGES_PATH= holds control characters" ;;
	*/../*) PROBLEM="$KEY_IMAGES_PATH=$MKMA_IMAGES_PATH leaves the device (it holds ..)" ;;
	esac
	[ -n "$PROBLEM" ]
}

MKMA_LOADED=' '

# load_modules NAMES: insmod in the given (dependency) order, each module once.
load_modules() {
	for _m in "$@"; do
		case $MKMA_LOADED in *" $_m "*) continue ;; esac
		MKMA_LOADED="$MKMA_LOADED$_m "
		if insmod "/lib/modules/mkma/$_m.ko" 2>"$MKMA_TMP/insmod.err"; then
			debug "loaded $_m"
		else
			# e.g. crc32c_intel under an emulated CPU; a generic fallback is in the list too
			debug "could not load $_m: $(cat "$MKMA_TMP/insmod.err")"
		fi
	done
}

# resolve_device SPEC: prints the device node for /dev/..., UUID=, LABEL=, PARTUUID=.
resolve_device() {
	case $1 in
	/dev/*)
		[ -b "$1" ] && printf '%s\n' "$1"
		;;
	UUID=* | LABEL=* | PARTUUID=* | PARTLABEL=*)
		blkid -l -o device -t "$1" 2>/dev/null || findfs "$1" 2>/dev/null
		;;
	*)
		return 1
		;;
	esac
}

# Storage drivers for the hardware that is there, as udev would pick them: every device's
# modalias in sysfs against the storage modules' aliases (match_storage, generated from
# modules.alias). Loading the whole storage list costs ~0.1 s per module under emulation,
# and a machine needs one or two of them. Each driver's chain (its dependencies, then it) is
# loaded in the background, so the device holding the images is looked for at once and a
# slow unrelated controller (AHCI next to a virtio disk) does not hold the boot up; chains
# sharing a dependency are safe (the kernel makes a second insmod of a module wait until
# the first is done). Chains already started are not started again.
MKMA_STARTED=','
load_matched_storage() {
	MKMA_MATCHED=''
	for _f in /sys/bus/*/devices/*/modalias; do
		[ -r "$_f" ] && read -r _alias <"$_f" && match_storage "$_alias"
	done
	start_chains "$MKMA_MATCHED"
}

# start_chains ",CHAIN,CHAIN…": load_modules CHAIN in the background for each chain not
# started before (MKMA_STARTED).
start_chains() {
	_rest=${1#,}
	while [ -n "$_rest" ]; do
		_chain=${_rest%%,*}
		case $_rest in *,*) _rest=${_rest#*,} ;; *) _rest='' ;; esac
		case $MKMA_STARTED in *",$_chain,"*) continue ;; esac
		MKMA_STARTED="$MKMA_STARTED$_chain,"
		# shellcheck disable=SC2086 # word splitting of the module list is intended
		load_modules $_chain &
	done
}

# No udev here: devtmpfs creates the nodes; poll until the device appears or time runs out.
# Devices behind a driver (USB sticks behind xhci, disks behind a SCSI host) show up later:
# the matching is repeated every second, and after MKMA_ALL_STORAGE_AFTER seconds every
# storage driver is loaded (hardware whose aliases mkma did not know).
wait_for_device() {
	read_uptime
	_now=${UPTIME%.*}
	_deadline=$((_now + MKMA_DEVICE_TIMEOUT))
	_rescan=$((_now + 1))
	_all=$((_now + MKMA_ALL_STORAGE_AFTER))
	while :; do
		DEVICE=$(resolve_device "$MKMA_DEVICE" | head -n 1)
		[ -n "$DEVICE" ] && return 0
		read_uptime
		_now=${UPTIME%.*}
		[ "$_now" -ge "$_deadline" ] && return 1
		if [ -n "$_all" ] && [ "$_now" -ge "$_all" ]; then
			log "$MKMA_DEVICE not found yet: loading every storage driver"
			# shellcheck disable=SC2086 # word splitting of the module list is intended
			load_modules $MKMA_MODULES_STORAGE
			_all=''
		elif [ "$_now" -ge "$_rescan" ]; then
			load_matched_storage
			_rescan=$((_now + 1))
		fi
		sleep 0.1
	done
}

mount_storage() {
	if [ -z "$MKMA_DEVICE" ]; then
		fatal "no storage device given" \
			"add $KEY_STORAGE_DEVICE=<device|UUID=…|LABEL=…> $KEY_IMAGES_PATH=<dir> to the kernel command line (mkma build prints both)"
		return 1
	fi
	if storage_problem; then
		fatal "$PROBLEM" "correct it on the kernel command line (mkma build prints the right one)"
		return 1
	fi
	phase device "waiting for $MKMA_DEVICE (up to ${MKMA_DEVICE_TIMEOUT}s)"
	if ! wait_for_device; then
		fatal "storage device $MKMA_DEVICE did not appear within ${MKMA_DEVICE_TIMEOUT}s" \
			"check $KEY_STORAGE_DEVICE=; known block devices: $(cd /sys/class/block 2>/dev/null && echo *)"
		return 1
	fi
	FSTYPE=$(blkid -o value -s TYPE "$DEVICE" 2>/dev/null)
	phase device-found "$DEVICE (${FSTYPE:-unknown filesystem})"
	# shellcheck disable=SC2046 # word splitting of the module list is intended
	load_modules $(fs_modules "$FSTYPE")
	if ! mount -o ro ${FSTYPE:+-t "$FSTYPE"} "$DEVICE" "$STORAGE" 2>"$MKMA_TMP/mount.err"; then
		fatal "cannot mount $DEVICE read-only: $(cat "$MKMA_TMP/mount.err")" \
			"is the filesystem's module in the initramfs? (initramfs_modules in mkma.toml)"
		return 1
	fi
	IMAGES="$STORAGE/${MKMA_IMAGES_PATH#/}"
	IMAGES=${IMAGES%/}
	if [ ! -f "$IMAGES/$MKMA_BASE_NAME" ]; then
		fatal "no base image at $MKMA_DEVICE:$MKMA_IMAGES_PATH/$MKMA_BASE_NAME" \
			"check $KEY_IMAGES_PATH=; that directory holds: $(cd "$IMAGES" 2>/dev/null && echo *)"
		return 1
	fi
}

# The tmpfs must hold the base and every layer: refuse plainly instead of dying halfway.
# Reads the layers' manifests into its own file, so the base's M_* values are kept.
check_space() {
	_base_kind=$M_KIND _base_entries=$M_ENTRIES _base_unpacked=$M_UNPACKED _base_data=$M_DATA_BYTES
	# shellcheck disable=SC2046 # layer names are [0-9A-Za-z._+-@,] (layer_state)
	layer_sizes "$IMAGES" $(boot_layers "$IMAGES")
	M_KIND=$_base_kind M_ENTRIES=$_base_entries M_UNPACKED=$_base_unpacked M_DATA_BYTES=$_base_data
	_need=$((M_UNPACKED + M_LAYERS_UNPACKED))
	# free blocks and block size of the tmpfs, one process
	# shellcheck disable=SC2046 # two numbers
	set -- $(stat -f -c '%a %S' "$ROOT")
	_avail_kb=$(($1 * ($2 / 1024)))
	_need_kb=$((_need / 1024))
	debug "space: need ${_need_kb} KiB, tmpfs has ${_avail_kb} KiB"
	if [ "$_need_kb" -gt "$_avail_kb" ]; then
		_mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
		fatal "the system needs $((_need_kb / 1024)) MiB of RAM filesystem but $KEY_RAM_SIZE=$MKMA_RAM_SIZE gives $((_avail_kb / 1024)) MiB (RAM: $((_mem_kb / 1024)) MiB)" \
			"give the machine more memory, raise $KEY_RAM_SIZE= (e.g. 75%), or persist less"
		return 1
	fi
}

unpack_all() {
	if ! mount -t tmpfs -o "size=$MKMA_RAM_SIZE,mode=0755" tmpfs "$ROOT" 2>"$MKMA_TMP/mount.err"; then
		fatal "cannot mount the RAM filesystem (size=$MKMA_RAM_SIZE): $(cat "$MKMA_TMP/mount.err")" \
			"check $KEY_RAM_SIZE= (a size such as 4G or a percentage of RAM such as 50%)"
		return 1
	fi
	mkdir -p "$RT_LOWER" "$RT_UPPER" "$RT_WORK" "$RT_MERGED"
	[ "$MKMA_BASE_FORMAT" = cpio ] || { unpack_all_image; return; } # base-image.sh
	if ! read_manifest "$IMAGES/$MKMA_BASE_NAME" "$MKMA_TMP/base.manifest"; then
		fatal "base image $IMAGES/$MKMA_BASE_NAME is unusable: $M_ERROR" "rebuild it with mkma build, or copy it again"
		return 1
	fi
	count_tries
	check_space || return 1
	uptime_cs
	_t0=$UPTIME_CS
	phase unpack-base "$MKMA_BASE_NAME: $((M_DATA_BYTES / 1048576)) MiB compressed, $((M_UNPACKED / 1048576)) MiB unpacked, $M_ENTRIES entries, with $EXTRACTOR"
	if ! unpack_base "$IMAGES/$MKMA_BASE_NAME" "$RT_LOWER"; then
		fatal "base image $IMAGES/$MKMA_BASE_NAME could not be unpacked: $M_ERROR" \
			"out of memory? (see above); otherwise the image is damaged: rebuild or copy it again"
		return 1
	fi
	uptime_cs
	_d=$((UPTIME_CS - _t0))
	[ "$_d" -gt 0 ] || _d=1
	centi "$_d"
	# MB/s with one decimal, in integer arithmetic (no awk process at boot)
	_rate=$((M_UNPACKED * 1000 / _d / 1048576))
	phase base-unpacked "in $CENTI s, $((_rate / 10)).$((_rate % 10)) MB/s"
	[ "$MKMA_LAYERS" = none ] && log "$KEY_LAYERS=none: no persistence layer applied (the base alone)"
	apply_layers "$IMAGES" "$RT_LOWER" "$ROOT/stage"
	phase layers-done "$M_APPLIED applied, $M_SKIPPED skipped"
}

mount_root() {
	# shellcheck disable=SC2086
	load_modules $MKMA_MODULES_OVERLAY
	mount_overlay overlayfs "$RT_MERGED" "${MKMA_LOWERDIR:-$RT_LOWER}" "$RT_UPPER" "$RT_WORK" || return 1
	mkdir -p "$RT_MERGED$RT_OVERLAY"
	# rbind: with base_format erofs/squashfs the image and the base view are mounts inside it
	mount -o rbind "$ROOT" "$RT_MERGED$RT_OVERLAY"
	# Where the images came from, for `mkma persist` (it also reads /proc/cmdline). The values
	# hold no control characters (storage_problem): one line each.
	printf 'device=%s\nimages_path=%s\nbase_data_sha256=%s\n' "$MKMA_DEVICE" "$MKMA_IMAGES_PATH" \
		"$(image_data_sha256 "$IMAGES/$MKMA_BASE_NAME")" >"$RT_BOOT_ENV"
	umount "$STORAGE" 2>/dev/null || warn "could not unmount the storage device"
}

boot() {
	mount_pseudo
	read_cmdline /proc/cmdline
	parse_cmdline "$CMDLINE"
	phase start "mkma init"
	load_matched_storage
	_drivers=$(printf '%s' "${MKMA_STARTED#,}" | tr ',' ' ')
	phase modules-loading "for the devices found: ${_drivers:-none}"
	until mount_storage; do :; done
	until unpack_all; do umount "$ROOT" 2>/dev/null; done
	until mount_root; do :; done
	if [ -n "$MKMA_BREAK" ]; then
		log "$KEY_BREAK: shell before switch_root (exit to continue)"
		setsid cttyhack sh || sh
	fi
	# the background driver loads are long done (the base unpack takes seconds); waiting
	# makes sure no insmod runs from an initramfs that switch_root is about to free
	wait
	phase switch-root "/sbin/init"
	for _m in /dev /proc /sys /run; do
		mkdir -p "$RT_MERGED$_m"
		mount --move "$_m" "$RT_MERGED$_m" 2>/dev/null || true
	done
	exec switch_root "$RT_MERGED" /sbin/init
}
