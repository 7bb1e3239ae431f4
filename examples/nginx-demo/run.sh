#!/usr/bin/env bash
# Seed 004's rolling update demo offline, in one command: sudo bash examples/nginx-demo/run.sh
# Extra arguments go to `tend up` (see ../up.sh).
exec bash "$(dirname "$0")/../up.sh" nginx-demo "$@"
