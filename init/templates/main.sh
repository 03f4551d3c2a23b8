# --- main.sh: the boot ------------------------------------------------------------------
# Generated at build time (from the image kernel's modules.dep and modules.alias):
# MKMA_MODULES_STORAGE and MKMA_MODULES_OVERLAY (load order), fs_modules TYPE, match_storage
# MODALIAS; and MKMA_DEFAULT_RAM_SIZE, MKMA_DEVICE_TIMEOUT.

STORAGE=/mnt/storage
ROOT=/overlay
MKMA_TMP=/run/mkma
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

# Kernel command line: mkma_storage_device= mkma_images_path= mkma_ram_size= mkma_on_error=
# mkma_debug mkma_break mkma_device_timeout=
parse_cmdline() {
	MKMA_DEVICE=
	MKMA_IMAGES_PATH=/
	MKMA_RAM_SIZE=$MKMA_DEFAULT_RAM_SIZE
	MKMA_BREAK=
	read -r _cmdline </proc/cmdline
	for _arg in $_cmdline; do
		case $_arg in
		mkma_storage_device=*) MKMA_DEVICE=${_arg#*=} ;;
		mkma_images_path=*) MKMA_IMAGES_PATH=${_arg#*=} ;;
		mkma_ram_size=*) MKMA_RAM_SIZE=${_arg#*=} ;;
		mkma_on_error=*) MKMA_ON_ERROR=${_arg#*=} ;;
		mkma_device_timeout=*) MKMA_DEVICE_TIMEOUT=${_arg#*=} ;;
		mkma_debug | mkma_debug=1) MKMA_DEBUG=1 ;;
		mkma_break | mkma_break=1) MKMA_BREAK=1 ;;
		esac
	done
}

MKMA_LOADED=' '
MKMA_ALL_STORAGE_AFTER=${MKMA_ALL_STORAGE_AFTER:-3}

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
			"add mkma_storage_device=<device|UUID=…|LABEL=…> mkma_images_path=<dir> to the kernel command line (mkma build prints both)"
		return 1
	fi
	phase device "waiting for $MKMA_DEVICE (up to ${MKMA_DEVICE_TIMEOUT}s)"
	if ! wait_for_device; then
		fatal "storage device $MKMA_DEVICE did not appear within ${MKMA_DEVICE_TIMEOUT}s" \
			"check mkma_storage_device=; known block devices: $(cd /sys/class/block 2>/dev/null && echo *)"
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
	if [ ! -f "$IMAGES/base.cpio.zst" ]; then
		fatal "no base image at $MKMA_DEVICE:$MKMA_IMAGES_PATH/base.cpio.zst" \
			"check mkma_images_path=; that directory holds: $(cd "$IMAGES" 2>/dev/null && echo *)"
		return 1
	fi
}

# The tmpfs must hold the base and every layer: refuse plainly instead of dying halfway.
# Reads the layers' manifests into its own file, so the base's M_* values are kept.
check_space() {
	_base_kind=$M_KIND _base_entries=$M_ENTRIES _base_unpacked=$M_UNPACKED _base_data=$M_DATA_BYTES
	# shellcheck disable=SC2046 # layer names are [0-9A-Za-z._+-] (sort_layers)
	layer_sizes "$IMAGES" $(sort_layers "$IMAGES")
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
		fatal "the system needs $((_need_kb / 1024)) MiB of RAM filesystem but mkma_ram_size=$MKMA_RAM_SIZE gives $((_avail_kb / 1024)) MiB (RAM: $((_mem_kb / 1024)) MiB)" \
			"give the machine more memory, raise mkma_ram_size= (e.g. 75%), or persist less"
		return 1
	fi
}

unpack_all() {
	if ! mount -t tmpfs -o "size=$MKMA_RAM_SIZE,mode=0755" tmpfs "$ROOT" 2>"$MKMA_TMP/mount.err"; then
		fatal "cannot mount the RAM filesystem (size=$MKMA_RAM_SIZE): $(cat "$MKMA_TMP/mount.err")" \
			"check mkma_ram_size= (a size such as 4G or a percentage of RAM such as 50%)"
		return 1
	fi
	mkdir -p "$ROOT/base" "$ROOT/fresh" "$ROOT/work" "$ROOT/merge"
	if ! read_manifest "$IMAGES/base.cpio.zst" "$MKMA_TMP/base.manifest"; then
		fatal "base image $IMAGES/base.cpio.zst is unusable: $M_ERROR" "rebuild it with mkma build, or copy it again"
		return 1
	fi
	check_space || return 1
	uptime_cs
	_t0=$UPTIME_CS
	phase unpack-base "$((M_DATA_BYTES / 1048576)) MiB compressed, $((M_UNPACKED / 1048576)) MiB unpacked, $M_ENTRIES entries"
	if ! unpack_base "$IMAGES/base.cpio.zst" "$ROOT/base"; then
		fatal "base image $IMAGES/base.cpio.zst could not be unpacked: $M_ERROR" \
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
	apply_layers "$IMAGES" "$ROOT/base" "$ROOT/stage"
	phase layers-done "$M_APPLIED applied, $M_SKIPPED skipped"
}

mount_root() {
	# shellcheck disable=SC2086
	load_modules $MKMA_MODULES_OVERLAY
	# redirect_dir/metacopy off: the upperdir stays self-describing, so `mkma persist` can
	# save it as a plain layer.
	if ! mount -t overlay overlay \
		-o "lowerdir=$ROOT/base,upperdir=$ROOT/fresh,workdir=$ROOT/work,redirect_dir=off,metacopy=off" \
		"$ROOT/merge" 2>"$MKMA_TMP/mount.err"; then
		fatal "cannot mount overlayfs: $(cat "$MKMA_TMP/mount.err")" "is the overlay module in the initramfs?"
		return 1
	fi
	mkdir -p "$ROOT/merge/overlay"
	mount --bind "$ROOT" "$ROOT/merge/overlay"
	# Where the images came from, for `mkma persist` (it also reads /proc/cmdline).
	printf 'device=%s\nimages_path=%s\n' "$MKMA_DEVICE" "$MKMA_IMAGES_PATH" >"$ROOT/boot.env"
	umount "$STORAGE" 2>/dev/null || warn "could not unmount the storage device"
}

boot() {
	mount_pseudo
	parse_cmdline
	phase start "mkma init"
	load_matched_storage
	_drivers=$(printf '%s' "${MKMA_STARTED#,}" | tr ',' ' ')
	phase modules-loading "for the devices found: ${_drivers:-none}"
	until mount_storage; do :; done
	until unpack_all; do umount "$ROOT" 2>/dev/null; done
	until mount_root; do :; done
	if [ -n "$MKMA_BREAK" ]; then
		log "mkma_break: shell before switch_root (exit to continue)"
		setsid cttyhack sh || sh
	fi
	# the background driver loads are long done (the base unpack takes seconds); waiting
	# makes sure no insmod runs from an initramfs that switch_root is about to free
	wait
	phase switch-root "/sbin/init"
	for _m in /dev /proc /sys /run; do
		mkdir -p "$ROOT/merge$_m"
		mount --move "$_m" "$ROOT/merge$_m" 2>/dev/null || true
	done
	exec switch_root "$ROOT/merge" /sbin/init
}
