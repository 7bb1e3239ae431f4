#!/usr/bin/env bash
# The seed lab offline, in one command: sudo bash examples/seed-lab/run.sh
# The local node is labelled disk=ssd, so the three xgp-web pods land on it.
# Extra arguments go to `tend up` (see ../up.sh).
exec bash "$(dirname "$0")/../up.sh" seed-lab --labels disk=ssd "$@"
