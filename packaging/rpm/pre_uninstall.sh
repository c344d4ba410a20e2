# berth %preun ($1: 0 on removal, 1 on upgrade).
#
# On removal, stops and disables the agent only: KillMode=process leaves its
# containers running (they belong to the Docker engine; nothing here stops
# them). On upgrade, does nothing: the agent keeps running until %postun
# restarts it on the new binary.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop berth.service || :
    fi
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable berth.service >/dev/null 2>&1 || :
    fi
fi
exit 0
