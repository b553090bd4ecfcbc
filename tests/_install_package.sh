# Shared body of tests/install_pgbouncer.sh and tests/install_chromium.sh
# (sourced, not run): fill in a missing Debian package with apt-get when this
# user may (root, or passwordless sudo); otherwise print one line and
# succeed, so the tests that need it skip, saying why. Never fails make test.
#
# The sourcing script sets:
#   package        the Debian package
#   override_var   the environment variable naming the binary to use instead
#   default_found  a function: whether the package's binary is installed
#   missing        how the no-apt-get note names what is missing
#   no_apt_hint    what that note tells a user to do
#   install_flags  extra apt-get install options (an array, may be empty)
#   skipping       the tests that skip without it ("the PgBouncer tests")
#   purpose        the tests named when installing ("the PgBouncer tests")
#
# --no-upgrade: this fills in a missing package, it never changes one.

found() {
	if [ -n "${!override_var:-}" ]; then
		[ -x "${!override_var}" ]
	else
		default_found
	fi
}

found && exit 0
if [ -n "${!override_var:-}" ]; then
	echo "note: $override_var=${!override_var} is not an executable; $skipping will skip"
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "note: $missing is missing and there is no apt-get; $skipping will skip ($no_apt_hint)"
	exit 0
fi
if [ "$(id -u)" = 0 ]; then
	as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	as_root=(sudo -n)
else
	echo "note: $package is missing and installing it needs root; $skipping will skip (run: sudo apt-get install $package)"
	exit 0
fi

install() {
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q "${install_flags[@]}" --no-upgrade "$package"
}

echo "installing Debian's $package for $purpose"
# Without package lists (a fresh machine) or with stale ones, update and retry.
install || { "${as_root[@]}" apt-get update -q && install; }
if ! found; then
	echo "note: installing $package with apt-get failed (see above); $skipping will skip"
fi
exit 0
