#!/bin/sh
# Configure and start the Postfix that bench/postfix_compare.py measures: on a
# benchmark machine only, as root, after
#   DEBIAN_FRONTEND=noninteractive apt-get install -y postfix     ("No configuration")
# It listens on 127.0.0.1:10025 and relays to 127.0.0.1:2727 (the harness's smtp-sink).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cp "$here/main.cf" /etc/postfix/main.cf
# master.cf: no smtpd on port 25; one on 127.0.0.1:10025; nothing chrooted.
postconf -MX smtp/inet
postconf -M "127.0.0.1:10025/inet=127.0.0.1:10025 inet n - n - - smtpd"
postconf -F "smtp/unix/chroot=n"
postfix check
postfix status >/dev/null 2>&1 && postfix reload || postfix start
echo "postfix master pid: $(cat /var/spool/postfix/pid/master.pid)"
