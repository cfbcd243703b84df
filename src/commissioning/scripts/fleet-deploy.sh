#!/bin/sh
# fleet-deploy: lays out the disks, writes the image and configures the installed system, from
# the deployment JSON at $FLEET_DEPLOYMENT, writing its progress to $FLEET_PROGRESS.
#
# Placeholder: the real script comes from the deployrole branch (the merge takes theirs). Until
# then a deploying run fails at once with a message the controller turns into its reason.
echo "fleet-deploy: check: this controller's fleet-deploy is a placeholder: build fleet with the deploy role (branch deployrole) to deploy machines" >&2
exit 1
