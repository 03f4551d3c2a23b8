# --- base-image.sh: a base stored as a read-only filesystem image (base_format) ----------
# MKMA_BASE_FORMAT (build time): cpio (main.sh unpacks base.cpio.zst) or erofs / squashfs:
# FILE_BASE_EROFS / FILE_BASE_SQUASHFS is copied into the RAM filesystem and mounted there
# (a loop device: no per-file work, and the tree stays compressed in RAM). The layers go into
# a middle tmpfs directory as overlayfs whiteouts and opaque directories: they are applied,
# by the same layer code as in cpio mode, through a temporary overlay (lower = the image,
# upper = the middle), so the kernel writes the whiteouts and opaque markers; the stage
# directories live inside that overlay (renames never cross a mount). Then
#   RT_LOWER   the read-only view middle:image, what `mkma persist` compares with
#   the root   lowerdir=middle:image, upperdir=RT_UPPER: the same upperdir as in cpio mode.

MKMA_IMAGE_MNT=$RT_OVERLAY/image
MKMA_MIDDLE=$RT_OVERLAY/middle

# base_image_file: the image's file name for MKMA_BASE_FORMAT.
base_image_file() {
	case $MKMA_BASE_FORMAT in
	erofs) echo "$FILE_BASE_EROFS" ;;
	squashfs) echo "$FILE_BASE_SQUASHFS" ;;
	esac
}

# unpack_all_image: unpack_all of image mode (the tmpfs is mounted, ROOT empty).
unpack_all_image() {
	_img=$(base_image_file)
	if [ ! -f "$IMAGES/$_img" ]; then
		fatal "no base image at $MKMA_DEVICE:$MKMA_IMAGES_PATH/$_img (this initramfs was built with base_format = $MKMA_BASE_FORMAT)" \
			"copy $_img from the build's output directory next to the other images"
		return 1
	fi
	# shellcheck disable=SC2046 # two numbers
	set -- $(stat -c %s "$IMAGES/$_img") $(stat -f -c '%a %S' "$ROOT")
	# shellcheck disable=SC2046 # layer names are [0-9A-Za-z._+-] (sort_layers)
	[ "$MKMA_LAYERS" = none ] || layer_sizes "$IMAGES" $(sort_layers "$IMAGES")
	_need_kb=$((($1 + ${M_LAYERS_UNPACKED:-0}) / 1024))
	_avail_kb=$(($2 * ($3 / 1024)))
	if [ "$_need_kb" -gt "$_avail_kb" ]; then
		fatal "the system needs $((_need_kb / 1024)) MiB of RAM filesystem but $KEY_RAM_SIZE=$MKMA_RAM_SIZE gives $((_avail_kb / 1024)) MiB" \
			"give the machine more memory, raise $KEY_RAM_SIZE= (e.g. 75%), or persist less"
		return 1
	fi
	uptime_cs
	_t0=$UPTIME_CS
	phase copy-base "$_img: $(($1 / 1048576)) MiB into RAM"
	if ! cp "$IMAGES/$_img" "$ROOT/$_img" 2>"$MKMA_TMP/cp.err"; then
		fatal "cannot copy $_img into RAM: $(cat "$MKMA_TMP/cp.err")" "out of memory? raise $KEY_RAM_SIZE="
		return 1
	fi
	# shellcheck disable=SC2046 # word splitting of the module list is intended
	load_modules $(fs_modules "$MKMA_BASE_FORMAT")
	mkdir -p "$MKMA_IMAGE_MNT" "$MKMA_MIDDLE" "$ROOT/mwork"
	if ! mount -t "$MKMA_BASE_FORMAT" -o ro,loop "$ROOT/$_img" "$MKMA_IMAGE_MNT" 2>"$MKMA_TMP/mount.err"; then
		fatal "cannot mount the base image $_img ($MKMA_BASE_FORMAT): $(cat "$MKMA_TMP/mount.err")" \
			"is it damaged? compare it with the build's mkma.json (sha256), or copy it again"
		return 1
	fi
	uptime_cs
	_d=$((UPTIME_CS - _t0))
	centi "$_d"
	phase base-mounted "in $CENTI s"
	if [ "$MKMA_LAYERS" = none ]; then
		log "$KEY_LAYERS=none: no persistence layer applied (the base alone)"
		phase layers-done "0 applied, none asked for"
	else
		count_tries # layers on trial spend a try here as in cpio mode (layer-common.sh)
		apply_layers_middle || return 1
		phase layers-done "$M_APPLIED applied, $M_SKIPPED skipped"
	fi
	# the view persist compares with; needs two lower layers, hence the empty middle's presence
	mount_overlay "the base view" "$RT_LOWER" "$MKMA_MIDDLE:$MKMA_IMAGE_MNT" || return 1
	MKMA_LOWERDIR=$MKMA_MIDDLE:$MKMA_IMAGE_MNT
}

# apply_layers_middle: every layer through a temporary overlay (lower = image, upper =
# middle) mounted on RT_LOWER, with the stage inside it; unmounted after.
apply_layers_middle() {
	# shellcheck disable=SC2086
	load_modules $MKMA_MODULES_OVERLAY
	mount_overlay "the overlay for the layers" "$RT_LOWER" "$MKMA_IMAGE_MNT" "$MKMA_MIDDLE" "$ROOT/mwork" || return 1
	apply_layers "$IMAGES" "$RT_LOWER" "$RT_LOWER/.mkma-stage"
	rm -rf "$RT_LOWER"/.mkma-stage.*
	umount "$RT_LOWER"
	rm -rf "$ROOT/mwork"
}
