# mkma preset desktop/30-user.toml: a user's login on tty1 starts the X session
if [ -z "${DISPLAY:-}" ] && [ "$(id -u)" -ne 0 ] && [ "$(tty)" = /dev/tty1 ]; then
	exec startx
fi
