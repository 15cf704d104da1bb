#!/bin/sh
# Installs what milterd's real-MTA tests (test/e2e) need on a fresh Debian 12, as root:
#   - postfix (+ smtp-sink), used as private instances only: the system postfix is not started;
#   - miltertest, libmilter-dev, libwrap0, m4, swaks, redis-server;
#   - Sendmail 8.17, extracted (not installed: it conflicts with postfix) into
#     $MILTERD_SENDMAIL_ROOT (default /opt/milterd-test/sendmail);
#   - an /etc/hosts entry giving this host a qualified name (Sendmail sleeps 60 s otherwise).
# Idempotent, non-interactive; prints each step; exits non-zero on the first failure.
set -eu

SENDMAIL_ROOT=${MILTERD_SENDMAIL_ROOT:-/opt/milterd-test/sendmail}
HOSTS_DOMAIN=milterd.test
export DEBIAN_FRONTEND=noninteractive

step() { printf '==> %s\n' "$*"; }
die() { printf 'install-deps: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
[ -r /etc/debian_version ] || die "Debian (12) expected"
command -v apt-get >/dev/null || die "apt-get not found"

# Package maintainer scripts must not start services (postfix on :25, redis on :6379): tests run
# their own private instances. policy-rc.d (exit 101 = "action forbidden") is honoured by both
# invoke-rc.d and deb-systemd-invoke; ours is removed again on exit, an existing one is kept.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=
cleanup() {
  if [ -n "$OWN_POLICY" ]; then rm -f "$POLICY"; fi
  if [ -n "${TMP_DL:-}" ]; then rm -rf "$TMP_DL"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ ! -e "$POLICY" ]; then
  step "forbidding service starts during install ($POLICY)"
  printf '#!/bin/sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  OWN_POLICY=1
fi

step "apt-get update"
apt-get update -q

# Postfix asks two debconf questions; "Local only" keeps it on loopback if it is ever started.
MAILNAME=$(hostname)
case "$MAILNAME" in *.*) ;; *) MAILNAME="$MAILNAME.$HOSTS_DOMAIN" ;; esac
step "preseeding postfix (Local only, mailname $MAILNAME)"
printf '%s\n' \
  "postfix postfix/main_mailer_type select Local only" \
  "postfix postfix/mailname string $MAILNAME" | debconf-set-selections

# Libraries the extracted sendmail binary links against (its Depends, minus the sendmail-*
# packages we do not install). Taken from the archive so a point release cannot break us.
SENDMAIL_LIBS=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances sendmail-bin |
  sed -n 's/^ *Depends: \(lib[^ ]*\)$/\1/p' | sort -u | tr '\n' ' ')
[ -n "$SENDMAIL_LIBS" ] || die "could not list sendmail-bin's library dependencies"

# A system postfix that was already running before us (a developer's machine) is left alone;
# only one that the package installation started gets stopped.
WAS_RUNNING=
if command -v postfix >/dev/null && postfix status >/dev/null 2>&1; then WAS_RUNNING=1; fi

PKGS="postfix miltertest libmilter-dev libwrap0 m4 swaks redis-server $SENDMAIL_LIBS"
step "apt-get install $PKGS"
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $PKGS

# If the installation still started the system postfix (e.g. a pre-existing policy allowed it),
# stop it and keep it from starting at boot: the tests run private instances and need none.
if [ -z "$WAS_RUNNING" ]; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    step "disabling the system postfix service"
    systemctl disable --now postfix.service >/dev/null 2>&1 || true
  fi
  if postfix status >/dev/null 2>&1; then
    step "stopping the system postfix the installation started"
    postfix stop
  fi
else
  step "leaving the system postfix running (it was running before)"
fi

SENDMAIL_BIN=$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail
SENDMAIL_CF=$SENDMAIL_ROOT/usr/share/sendmail/cf/m4/cf.m4
if [ -x "$SENDMAIL_BIN" ] && [ -r "$SENDMAIL_CF" ]; then
  step "sendmail already extracted in $SENDMAIL_ROOT"
else
  step "downloading sendmail-bin sendmail-cf sendmail-base"
  TMP_DL=$(mktemp -d)
  # apt downloads as user _apt: let it write there (otherwise it warns and falls back to root).
  chown _apt "$TMP_DL" 2>/dev/null || true
  (cd "$TMP_DL" && apt-get download -q sendmail-bin sendmail-cf sendmail-base)
  step "extracting them into $SENDMAIL_ROOT"
  mkdir -p "$TMP_DL/root"
  for deb in "$TMP_DL"/*.deb; do
    dpkg-deb -x "$deb" "$TMP_DL/root"
  done
  [ -x "$TMP_DL/root/usr/libexec/sendmail/sendmail" ] || die "no sendmail binary in the packages"
  # Move into place in one rename so an interrupted run leaves nothing half extracted.
  mkdir -p "$(dirname "$SENDMAIL_ROOT")"
  rm -rf "$SENDMAIL_ROOT"
  mv "$TMP_DL/root" "$SENDMAIL_ROOT"
fi
step "checking sendmail's shared libraries"
if ldd "$SENDMAIL_BIN" | grep 'not found'; then die "sendmail is missing shared libraries"; fi

# Sendmail wants its host name to resolve to a name with a dot; with none (as in containers),
# it logs "unqualified host name" and sleeps 60 s. Add an alias unless one exists already.
HOST=$(hostname)
if getent hosts "$HOST" | tr ' \t' '\n\n' | grep -q '\.[A-Za-z]'; then
  step "/etc/hosts already gives $HOST a qualified name"
else
  case "$HOST" in
    *.*) ENTRY="127.0.0.1 $HOST ${HOST%%.*}" ;;
    *) ENTRY="127.0.0.1 $HOST.$HOSTS_DOMAIN $HOST" ;;
  esac
  step "adding '$ENTRY' to /etc/hosts"
  # Append in place: in containers /etc/hosts is a bind mount that cannot be replaced.
  printf '%s\n' "$ENTRY" >>/etc/hosts
fi

step "checking the tools"
for tool in postfix smtp-sink postconf miltertest swaks m4 redis-server; do
  command -v "$tool" >/dev/null || die "$tool not found after install"
done
[ -r /usr/include/libmilter/mfapi.h ] || die "libmilter headers missing"
step "done"
