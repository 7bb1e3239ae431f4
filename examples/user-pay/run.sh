#!/usr/bin/env bash
# Seed 002's user and pay services offline, in one command: sudo bash examples/user-pay/run.sh
# Extra arguments go to `tend up` (see ../up.sh).
exec bash "$(dirname "$0")/../up.sh" user-pay "$@"
