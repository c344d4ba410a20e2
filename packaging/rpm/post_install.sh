# berth %post ($1: 1 on install, 2 on upgrade).
#
# A fresh install enables the unit (it starts at the next boot) but does not
# start it: /etc/berth/berth.toml is an example until the image build puts
# the fleet's manifest there. Upgrades are handled in %postun. Outside a
# running systemd (an image build, a chroot) systemctl enables offline.

# The state directory holds the pin, which holds the containers'
# environment: root only. (cargo-generate-rpm cannot ship an empty
# directory; the unit's StateDirectory= would also make it.)
mkdir -p /var/lib/berth
chmod 0700 /var/lib/berth

if [ "$1" -eq 1 ]; then
    if command -v systemctl >/dev/null 2>&1; then
        systemctl enable berth.service >/dev/null 2>&1 \
            || echo "berth: could not enable berth.service; run: systemctl enable berth" >&2
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || :
    fi
fi
exit 0
