# berth %postun ($1: 0 on removal, 1 on upgrade).
#
# On upgrade, restarts the agent only if it was running, and only if the new
# binary accepts the manifest. Restarting the agent never stops a container:
# the unit's KillMode=process leaves them to the Docker engine.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 1 ] && systemctl is-active --quiet berth.service; then
        if /usr/bin/berth validate --config /etc/berth/berth.toml >/dev/null 2>&1; then
            systemctl try-restart berth.service \
                || echo "berth: restarting berth.service failed; see: journalctl -u berth" >&2
        else
            echo "berth: the new version rejects /etc/berth/berth.toml (berth validate);" \
                 "the running agent was left as it is: fix the manifest, then: systemctl restart berth" >&2
        fi
    fi
fi
exit 0
