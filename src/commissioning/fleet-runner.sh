#!/bin/sh
# fleet-runner.sh: what a booted machine does for the controller (served at
# /scripts/fleet-runner.sh). Run by the ephemeral environment's /init, and by register-live.sh on
# a live host. POSIX sh: busybox sh, dash or bash, with curl, or else wget (busybox or GNU).
#
# Environment: FLEET_URL (required), FLEET_ROLE (enlist | commissioning | ... | register-live),
# FLEET_MAC, FLEET_MACHINE, FLEET_BOOT_SECRET (the one-shot `fleet.boot=` of the iPXE script),
# FLEET_REGISTRATION (register-live: the one-shot registration secret), FLEET_AFTER_OVERRIDE
# (poweroff | reboot | wait | exit: replaces the controller's `after`).
#
# 1. role enlist without a machine: `known?mac=..` (known: log it and power off), else enlist;
#    inside the ephemeral environment it first looks for a BMC (find_bmc) and reports it. A new
#    record's enlistment answers with its run's token; a machine the controller already knows
#    (by its BMC address) gets none and is told what to do `after` (it boots again as known).
#    With a machine and a secret: the secret is exchanged, once, for the token of a run.
# 2. GET instructions; a heartbeat loop in the background (`stop`, or 401 when the run's token
#    expired, powers off at once).
# 3. Each script: download, post `running`, run it under `timeout` with FLEET_URL FLEET_MACHINE
#    FLEET_ROLE FLEET_RUN FLEET_SCRIPT FLEET_RESULTS FLEET_PROGRESS, post the result (stdout,
#    stderr and the results file base64-encoded). A `stop` reply (200, or 409) ends the run: no
#    signal. For role deploying the runner first fetches the deployment JSON (GET .../deployment)
#    into a file of its own and gives its path to the scripts as FLEET_DEPLOYMENT (the run's
#    token never reaches a script). A script may write one line `PHASE [DONE TOTAL]` to
#    $FLEET_PROGRESS: the heartbeats carry it as {"progress": {"phase", "done", "total"}}.
# 4. POST signal (ok, or failed when the environment itself broke), then `after`.
# The machine is powered off or rebooted only inside the ephemeral environment (where
# /etc/fleet/ephemeral exists) and never with FLEET_ROLE=register-live: there the runner exits,
# with 0 when every script passed and the signal was taken, else 1.
# Every step is logged as `fleet: ...` on stderr (the console in the ephemeral environment).

URL=${FLEET_URL:-}
ROLE=${FLEET_ROLE:-}
MAC=${FLEET_MAC:-}
MACHINE=${FLEET_MACHINE:-}
BOOT_SECRET=${FLEET_BOOT_SECRET:-}
REGISTRATION=${FLEET_REGISTRATION:-}
TOKEN=""
AFTER_OVERRIDE=${FLEET_AFTER_OVERRIDE:-}
unset FLEET_BOOT_SECRET FLEET_REGISTRATION FLEET_TOKEN   # the scripts get no secret
URL=${URL%/}
HTTP_TIMEOUT=60
MAX_OUTPUT=1048576   # bytes of stdout and of stderr sent per script (the tail is kept)
MAX_RESULTS=524288   # bytes of the results file (a bigger one is not sent)
MAIN_PID=$$
HB_PID=""
STATUS=0             # the exit status on a live host

log() { printf 'fleet: %s\n' "$*" >&2; }

# Power is ours only inside the ephemeral environment, never on a live host.
CAN_POWER=0
if [ -e /etc/fleet/ephemeral ] && [ "$ROLE" != register-live ]; then CAN_POWER=1; fi

stop_heartbeat() {
  if [ -n "$HB_PID" ]; then
    kill "$HB_PID" 2>/dev/null
    HB_PID=""
  fi
}

cleanup() {
  stop_heartbeat
  [ -n "${WORK:-}" ] && rm -rf "$WORK"
}

# finish AFTER: poweroff | reboot | wait | exit.
finish() {
  after=${AFTER_OVERRIDE:-$1}
  if [ "$CAN_POWER" = 0 ]; then
    case "$after" in
      exit) ;;
      *) log "after $after: not in the ephemeral environment, exiting instead" ;;
    esac
    after="exit"
  fi
  case "$after" in
    reboot)
      stop_heartbeat
      log "rebooting"
      sync
      reboot -f
      ;;
    wait)
      log "waiting (heartbeats go on)"
      echo waiting > "$WORK/stage"
      while :; do
        if [ -n "$HB_PID" ] && kill -0 "$HB_PID" 2>/dev/null; then
          wait "$HB_PID"
        else
          sleep 60
        fi
      done
      ;;
    exit)
      log "done (status $STATUS)"
      cleanup
      exit "$STATUS"
      ;;
    *)
      [ "$after" = poweroff ] || log "unknown after '$after': powering off"
      stop_heartbeat
      log "powering off"
      sync
      poweroff -f
      ;;
  esac
  sleep 10
  exit "$STATUS"
}

# A failure before the run could start: nothing to signal.
give_up() {
  log "$*"
  STATUS=1
  finish poweroff
}

# shellcheck disable=SC2317 # run by the trap
on_signal() {
  log "interrupted"
  STATUS=1
  cleanup
  exit 1
}
trap on_signal TERM INT HUP
trap cleanup EXIT

[ -n "$URL" ] || give_up "FLEET_URL is not set"
case "$URL" in http://*|https://*) ;; *) give_up "FLEET_URL is not an http(s) URL: $URL" ;; esac
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet-runner.XXXXXX") || give_up "cannot make a temporary directory"
command -v base64 >/dev/null 2>&1 || give_up "no base64 command"

# --- HTTP ---------------------------------------------------------------------------------------
if command -v curl >/dev/null 2>&1; then
  CLIENT=curl
elif command -v wget >/dev/null 2>&1; then
  if wget --version 2>/dev/null | grep -q 'GNU Wget'; then CLIENT=gnu-wget; else CLIENT=busybox-wget; fi
else
  give_up "neither curl nor wget is installed"
fi
TIMEOUT=""
command -v timeout >/dev/null 2>&1 && TIMEOUT="timeout $((HTTP_TIMEOUT + 5))"

# http OUT METHOD PATH [BODY_FILE]: the response body goes to OUT, its status to HTTP_CODE.
# Returns non-zero when no HTTP response came (HTTP_CODE empty; the error is in OUT.err).
# busybox wget keeps no body on an HTTP error status, so OUT is then empty.
http() {
  _out=$1 _method=$2 _url=$URL$3 _data=${4:-}
  rm -f "$_out" "$_out.err"
  HTTP_CODE=""
  set --
  [ -n "$TOKEN" ] && set -- "$@" --header "Authorization: Bearer $TOKEN"
  [ -n "$_data" ] && set -- "$@" --header "Content-Type: application/json"
  if [ "$CLIENT" = curl ]; then
    if [ -n "$_data" ]; then set -- "$@" --data-binary "@$_data"
    elif [ "$_method" = POST ]; then set -- "$@" -X POST
    fi
    HTTP_CODE=$(curl -sS -m "$HTTP_TIMEOUT" -o "$_out" -w '%{http_code}' "$@" "$_url" 2>"$_out.err") || HTTP_CODE=""
    [ "$HTTP_CODE" = 000 ] && HTTP_CODE=""
  else
    if [ -n "$_data" ]; then set -- "$@" --post-file "$_data"
    elif [ "$_method" = POST ]; then set -- "$@" --post-data ""
    fi
    [ "$CLIENT" = gnu-wget ] && set -- "$@" --content-on-error -t 1 -T "$HTTP_TIMEOUT"
    # -S prints the status line on stderr (busybox: also "server returned error: HTTP/1.1 409").
    $TIMEOUT wget -q -S -O "$_out" "$@" "$_url" 2>"$_out.err"
    HTTP_CODE=$(sed -n 's/.*HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$_out.err" | tail -n 1)
  fi
  [ -f "$_out" ] || : > "$_out"
  [ -n "$HTTP_CODE" ]
}

# What went wrong with the last call, in one line.
http_problem() {
  if [ -n "$HTTP_CODE" ]; then
    printf 'HTTP %s %s' "$HTTP_CODE" "$(head -c 200 "$1" | tr '\n' ' ')"
  else
    head -c 200 "$1.err" 2>/dev/null | tr '\n' ' '
  fi
}

# api OUT METHOD PATH [BODY_FILE]: http with retries when no response or a 5xx came (for
# about a minute).
# Returns 0 for 2xx, 2 for 409 or 401 (OUT then says `stop REASON`: the run is over, its token
# expired), 1 for anything else.
api() {
  _try=1
  while :; do
    if http "$@"; then
      case "$HTTP_CODE" in
        2??) return 0 ;;
        409)
          grep -q '^stop' "$1" || echo "stop the controller answered 409" > "$1"
          return 2
          ;;
        401)
          if [ -n "$TOKEN" ]; then
            printf 'stop %s\n' "$(sed -n 's/^error *//p' "$1" | head -n 1)" > "$1"
            return 2
          fi
          return 1
          ;;
        5??) ;;
        *) return 1 ;;
      esac
    fi
    # 1, 2, 4, 8 then 10 s between tries: about a minute in all (the simulator waits as long),
    # enough for a controller whose store is failing over, or a busy one, to answer again.
    [ $_try -lt 9 ] || return 1
    _pause=$((1 << (_try - 1)))
    [ $_pause -le 10 ] || _pause=10
    log "$2 $3: $(http_problem "$1"); trying again in ${_pause}s"
    sleep $_pause
    _try=$((_try + 1))
  done
}

# The REASON of a `stop REASON` reply in OUT; fails when OUT holds no stop.
stop_reason() {
  grep -q '^stop' "$1" || return 1
  sed -n 's/^stop *//p' "$1" | head -n 1
}

# The value of `KEY value` in a reply.
value_of() { awk -v key="$1" '$1 == key { sub(/^[^ \t]+[ \t]*/, ""); print; exit }' "$2"; }

json_escape() { printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g'; }

b64() { base64 | tr -d '\n'; }

now_ms() {
  if [ -r /proc/uptime ]; then
    awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime
  else
    echo $(($(date +%s) * 1000))
  fi
}

valid_name() {
  case "$1" in
    ''|*[!A-Za-z0-9._-]*) return 1 ;;
  esac
  return 0
}

machine_path() { echo "/metadata/v1/machines/$MACHINE/$1"; }

# --- the BMC -----------------------------------------------------------------------------------
# find_bmc: while enlisting inside the ephemeral environment, as MAAS does: load the IPMI driver;
# when /dev/ipmi0 appears, read the BMC's LAN address (channel 1, else the first LAN channel) and
# create or reset the user `fleet` (a free slot, ADMINISTRATOR on that channel, a new random
# password) so that the controller can power the machine. Sets BMC_JSON (the enlistment's `bmc`
# member). Whatever the BMC refuses is logged, and the machine enlists without a BMC.
BMC_JSON=""
BMC_USER=fleet

ipmi() { timeout 30 ipmitool -I open "$@" </dev/null 2>"$WORK/ipmi.err"; }
ipmi_problem() { grep -v 'IANA PEN' "$WORK/ipmi.err" | head -c 200 | tr '\n' ' '; }

find_bmc() {
  [ "$CAN_POWER" = 1 ] || return 1   # never on a live host
  if ! command -v ipmitool >/dev/null 2>&1; then
    log "bmc: no ipmitool in this environment: enlisting without a BMC"
    return 1
  fi
  if [ ! -e /dev/ipmi0 ]; then
    modprobe -a -q ipmi_msghandler ipmi_devintf ipmi_si 2>/dev/null
    _tries=0
    # ipmi_si refuses to load where it finds no system interface: no need to wait then.
    while [ ! -e /dev/ipmi0 ] && [ -d /sys/module/ipmi_si ] && [ $_tries -lt 10 ]; do
      sleep 0.5
      _tries=$((_tries + 1))
    done
  fi
  if [ ! -e /dev/ipmi0 ]; then
    log "bmc: none found (no /dev/ipmi0 after loading ipmi_si)"
    return 1
  fi
  # The LAN channel: 1, else the first channel `lan print` takes.
  channel="" address=""
  for candidate in 1 2 3 4 5 6 7 8 9 10 11; do
    if ipmi lan print "$candidate" > "$WORK/lan"; then
      channel=$candidate
      break
    fi
  done
  if [ -z "$channel" ]; then
    log "bmc: /dev/ipmi0 is there but no LAN channel answered: $(ipmi_problem)"
    return 1
  fi
  address=$(sed -n 's/^IP Address[ \t]*: *\([0-9.]*\).*/\1/p' "$WORK/lan" | head -n 1)
  case "$address" in
    ''|0.0.0.0)
      log "bmc: LAN channel $channel has no IP address: enlisting without a BMC"
      return 1
      ;;
  esac
  # The user slot: the one named fleet, else the first free one (1 is the anonymous user).
  if ! ipmi -c user list "$channel" > "$WORK/users"; then
    log "bmc: $address: listing its users failed: $(ipmi_problem)"
    return 1
  fi
  slot=$(awk -F, -v user="$BMC_USER" '$2 == user { print $1; exit }' "$WORK/users")
  new_user=""
  if [ -z "$slot" ]; then
    slot=$(awk -F, '$1 ~ /^[0-9]+$/ && $1 > 1 && $2 == "" { print $1; exit }' "$WORK/users")
    new_user=1
  fi
  if [ -z "$slot" ]; then
    log "bmc: $address: no free user slot for $BMC_USER: enlisting without a BMC"
    return 1
  fi
  # 16 random letters and digits: IPMI v2 takes at most 20 bytes, and a 16-byte password is
  # also kept by BMCs (and ipmi_sim) that store IPMI 1.5 passwords.
  password=""
  while [ ${#password} -lt 16 ]; do
    password=$password$(head -c 64 /dev/urandom | tr -dc 'A-Za-z0-9')
  done
  password=$(printf '%s' "$password" | head -c 16)
  if [ -n "$new_user" ] && ! ipmi user set name "$slot" "$BMC_USER"; then
    log "bmc: $address: naming user $slot $BMC_USER was refused: $(ipmi_problem)"
    return 1
  fi
  if ! ipmi user set password "$slot" "$password" 16 >/dev/null \
     && ! ipmi user set password "$slot" "$password" 20 >/dev/null; then
    log "bmc: $address: setting the password of user $slot was refused: $(ipmi_problem)"
    return 1
  fi
  if ! ipmi channel setaccess "$channel" "$slot" callin=on ipmi=on link=on privilege=4 >/dev/null; then
    log "bmc: $address: giving user $slot ADMINISTRATOR on channel $channel was refused: $(ipmi_problem)"
    return 1
  fi
  if ! ipmi user enable "$slot" >/dev/null; then
    log "bmc: $address: enabling user $slot was refused: $(ipmi_problem)"
    return 1
  fi
  log "bmc: ipmi $address (channel $channel): user $BMC_USER in slot $slot $([ -n "$new_user" ] && echo created || echo reset)"
  BMC_JSON=$(printf '"bmc":{"type":"ipmi","address":"%s","user":"%s","password":"%s"}' \
    "$address" "$BMC_USER" "$password")
  return 0
}

log "runner: url=$URL role=${ROLE:--} machine=${MACHINE:--} client=$CLIENT"

# --- 1. enlist ----------------------------------------------------------------------------------
if [ "$ROLE" = enlist ] && [ -z "$MACHINE" ]; then
  macs=""
  for device in /sys/class/net/*; do
    name=${device##*/}
    [ "$name" = lo ] && continue
    [ -e "$device/device" ] || continue   # physical interfaces only
    address=$(cat "$device/address" 2>/dev/null)
    case "$address" in ''|00:00:00:00:00:00) continue ;; esac
    case " $macs " in *" $address "*) continue ;; esac
    macs="$macs $address"
  done
  macs=${macs# }
  [ -n "$MAC" ] || MAC=${macs%% *}
  [ -n "$MAC" ] || give_up "no MAC address to enlist with"
  query=""
  for address in $macs; do query="$query&mac=$address"; done
  [ -n "$query" ] || query="&mac=$MAC"
  api "$WORK/known" GET "/metadata/v1/known?${query#&}" \
    || give_up "known?mac: $(http_problem "$WORK/known")"
  if grep -q '^known' "$WORK/known"; then
    log "this machine is already known: nothing to enlist"
    finish poweroff
  fi
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
  esac
  find_bmc || BMC_JSON=""
  {
    printf '{"architecture":"%s","boot_mac":"%s","macs":[' "$arch" "$MAC"
    separator=""
    for address in $macs; do printf '%s"%s"' "$separator" "$address"; separator=,; done
    printf ']'
    [ -n "$BMC_JSON" ] && printf ',%s' "$BMC_JSON"
    printf '}'
  } > "$WORK/enlist.json"
  log "enlisting: boot mac $MAC, macs $macs$([ -n "$BMC_JSON" ] && echo ", with its BMC")"
  api "$WORK/enlisted" POST /metadata/v1/enlist "$WORK/enlist.json"
  case $? in
    0) ;;
    2) log "enlist: $(head -n 1 "$WORK/enlisted")"; finish poweroff ;;
    *) give_up "enlist: $(http_problem "$WORK/enlisted")" ;;
  esac
  if grep -q '^known' "$WORK/enlisted"; then
    # Known already (by its BMC address, say): no token for an anonymous caller. It boots
    # again as a known machine, with a boot secret of its own.
    after=$(value_of after "$WORK/enlisted")
    log "enlist: the controller knows this machine already: after ${after:-poweroff}"
    finish "${after:-poweroff}"
  fi
  MACHINE=$(value_of machine "$WORK/enlisted")
  TOKEN=$(value_of token "$WORK/enlisted")
  if [ -z "$MACHINE" ] || [ -z "$TOKEN" ]; then give_up "enlist: no machine or token in the reply"; fi
  log "enlisted as $MACHINE (status $(value_of status "$WORK/enlisted"))"
fi

# --- 1b. a one-shot secret for the run's token ------------------------------------------------
if [ -z "$TOKEN" ] && [ -n "$MACHINE" ] && { [ -n "$BOOT_SECRET" ] || [ -n "$REGISTRATION" ]; }; then
  valid_name "$MACHINE" || give_up "bad machine name: $MACHINE"
  if [ -n "$REGISTRATION" ]; then
    printf '{"registration":"%s"}' "$(json_escape "$REGISTRATION")" > "$WORK/exchange.json"
  else
    printf '{"boot":"%s"}' "$(json_escape "$BOOT_SECRET")" > "$WORK/exchange.json"
  fi
  BOOT_SECRET="" REGISTRATION=""
  api "$WORK/exchanged" POST "$(machine_path exchange)" "$WORK/exchange.json"
  answer=$?
  rm -f "$WORK/exchange.json"
  case $answer in
    0) ;;
    2) log "exchange: $(head -n 1 "$WORK/exchanged")"; STATUS=1; finish poweroff ;;
    *) give_up "exchange of the one-shot secret refused: $(http_problem "$WORK/exchanged")" ;;
  esac
  if [ "$(value_of role "$WORK/exchanged")" = none ]; then
    log "nothing to do ($(value_of status "$WORK/exchanged"))"
    finish "$(value_of after "$WORK/exchanged")"
  fi
  TOKEN=$(value_of token "$WORK/exchanged")
  log "secret exchanged: run $(value_of run "$WORK/exchanged") ($(value_of role "$WORK/exchanged"))"
fi

[ -n "$MACHINE" ] || give_up "no machine name (FLEET_MACHINE) and not enlisting"
valid_name "$MACHINE" || give_up "bad machine name: $MACHINE"
[ -n "$TOKEN" ] || give_up "no token for $MACHINE: no boot secret (fleet.boot) or registration secret to exchange"

# --- 2. instructions and heartbeats -------------------------------------------------------------
# The run's role (on a live host register-live: non-destructive scripts only) was decided when
# its token was handed out.
instructions=$(machine_path instructions)
api "$WORK/instructions" GET "$instructions" \
  || give_up "instructions: $(http_problem "$WORK/instructions")"
RUN_ROLE=$(value_of role "$WORK/instructions")
RUN=$(value_of run "$WORK/instructions")
HEARTBEAT=$(value_of heartbeat "$WORK/instructions")
AFTER=$(value_of after "$WORK/instructions")
case "$HEARTBEAT" in ''|*[!0-9]*|0) HEARTBEAT=30 ;; esac
case "$AFTER" in poweroff|reboot|wait|exit) ;; *) AFTER=poweroff ;; esac
grep '^script[ 	]' "$WORK/instructions" > "$WORK/scripts" || : > "$WORK/scripts"
log "instructions: role ${RUN_ROLE:-?} run ${RUN:--} heartbeat ${HEARTBEAT}s scripts $(awk '{printf "%s ", $2}' "$WORK/scripts")after $AFTER"
if [ "$RUN_ROLE" = none ] || [ -z "$RUN_ROLE" ]; then
  log "nothing to do"
  finish "$AFTER"
fi
valid_name "$RUN" || give_up "bad run id in the instructions: '$RUN'"
# The scripts see the role they run for; on a live host, register-live.
SCRIPT_ROLE=$RUN_ROLE
[ "$ROLE" = register-live ] && SCRIPT_ROLE=register-live

echo starting > "$WORK/stage"
: > "$WORK/progress"

# The heartbeat's body: the stage, and the progress a script reported (`PHASE [DONE TOTAL]`).
heartbeat_body() {
  printf '{"stage":"%s"' "$(json_escape "$(cat "$WORK/stage" 2>/dev/null)")"
  # shellcheck disable=SC2046 # one line of words
  set -- $(head -n 1 "$WORK/progress" 2>/dev/null)
  case "${1:-}" in
    ''|*[!a-z0-9_-]*) ;;
    *)
      printf ',"progress":{"phase":"%s"' "$1"
      case "${2:-}:${3:-}" in
        *[!0-9:]*|:*|*:|0[0-9]*|*:0[0-9]*) ;;
        *) printf ',"done":%s,"total":%s' "$2" "$3" ;;
      esac
      printf '}'
      ;;
  esac
  printf '}'
}

heartbeat_loop() {
  trap - EXIT INT HUP
  sleeper=""
  # Stopped by the main loop: quietly, at once (a trap waits for a foreground sleep, not for wait).
  trap '[ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null; exit 0' TERM
  beats=0
  while :; do
    sleep "$HEARTBEAT" >/dev/null 2>&1 &
    sleeper=$!
    wait "$sleeper"
    sleeper=""
    heartbeat_body > "$WORK/heartbeat.json"
    http "$WORK/heartbeat.out" POST "$(machine_path heartbeat)" "$WORK/heartbeat.json"
    case "$HTTP_CODE" in
      2??|409|401)
        beats=$((beats + 1))
        if [ "$HTTP_CODE" != 200 ] || grep -q '^stop' "$WORK/heartbeat.out"; then
          log "heartbeat: stop $(stop_reason "$WORK/heartbeat.out" || head -n 1 "$WORK/heartbeat.out")"
          if [ "$CAN_POWER" = 1 ] && [ "$AFTER_OVERRIDE" != exit ]; then
            log "powering off"
            sync
            poweroff -f
          fi
          kill -TERM "$MAIN_PID" 2>/dev/null
          exit 0
        fi
        [ $beats = 1 ] && log "heartbeat: $(head -n 1 "$WORK/heartbeat.out") (every ${HEARTBEAT}s)"
        ;;
      *) log "heartbeat failed: $(http_problem "$WORK/heartbeat.out")" ;;
    esac
  done
}
heartbeat_loop &
HB_PID=$!

# --- 3. the scripts -----------------------------------------------------------------------------
STOPPED=""       # the reason of a stop reply
BROKEN=""        # what broke in the environment itself

post_result() {   # post_result BODY_FILE NAME [BODY_FILE_WITHOUT_RESULTS]
  api "$WORK/reply" POST "$(machine_path results)" "$1"
  answer=$?
  if [ $answer = 1 ] && [ "$HTTP_CODE" = 400 ] && [ -n "${3:-}" ]; then
    # The results file is not what the controller takes (not a JSON object): send the rest.
    log "script $2: the controller refused its results file ($(http_problem "$WORK/reply")); sending the result without it"
    api "$WORK/reply" POST "$(machine_path results)" "$3"
    answer=$?
  fi
  case $answer in
    0) if reason=$(stop_reason "$WORK/reply"); then STOPPED=${reason:-stop}; fi ;;
    2) STOPPED=$(stop_reason "$WORK/reply"); STOPPED=${STOPPED:-stop} ;;
    *) BROKEN="posting the result of $2 failed: $(http_problem "$WORK/reply")" ;;
  esac
}

# A deploying run: the deployment (layout, image, network, keys, call-back) into a file, for
# the scripts to read as FLEET_DEPLOYMENT.
DEPLOYMENT=""
if [ "$RUN_ROLE" = deploying ]; then
  echo fetch > "$WORK/progress"
  api "$WORK/deployment.json" GET "$(machine_path deployment)"
  case $? in
    0)
      chmod 0600 "$WORK/deployment.json"
      DEPLOYMENT="$WORK/deployment.json"
      log "deployment: $(wc -c < "$DEPLOYMENT") bytes"
      ;;
    2) STOPPED=$(stop_reason "$WORK/deployment.json"); STOPPED=${STOPPED:-stop} ;;
    *) BROKEN="fetching the deployment failed: $(http_problem "$WORK/deployment.json")" ;;
  esac
fi

# The scripts read the list on a descriptor of their own, so their stdin is /dev/null.
exec 3< "$WORK/scripts"
while read -r _ name kind timeout _ <&3; do
  if [ -n "$STOPPED" ] || [ -n "$BROKEN" ]; then break; fi
  if ! valid_name "$name"; then BROKEN="bad script name in the instructions: '$name'"; break; fi
  case "$kind" in commissioning|testing|erase|deploy|rescue) ;; *) BROKEN="bad kind '$kind' for $name"; break ;; esac
  case "$timeout" in ''|*[!0-9]*) BROKEN="bad timeout '$timeout' for $name"; break ;; esac
  dir="$WORK/run/$name"
  mkdir -p "$dir/cwd"
  echo "running $name" > "$WORK/stage"
  if ! api "$dir/script" GET "$(machine_path "scripts/$name")"; then
    BROKEN="downloading $name failed: $(http_problem "$dir/script")"
    break
  fi
  printf '{"run":"%s","name":"%s","kind":"%s","status":"running"}' "$RUN" "$name" "$kind" > "$dir/running.json"
  post_result "$dir/running.json" "$name"
  if [ -n "$STOPPED" ] || [ -n "$BROKEN" ]; then break; fi
  log "script $name ($kind, timeout ${timeout}s): running"
  chmod 0755 "$dir/script"
  results="$dir/results.json"
  started=$(now_ms)
  if head -c 2 "$dir/script" | grep -q '^#!'; then set -- "$dir/script"; else set -- sh "$dir/script"; fi
  # (The subshell's 2>/dev/null takes the shell's own "Terminated" when the timeout kills it.)
  (
    cd "$dir/cwd" || exit 126
    [ -n "$DEPLOYMENT" ] && export FLEET_DEPLOYMENT="$DEPLOYMENT"
    FLEET_URL=$URL FLEET_MACHINE=$MACHINE FLEET_ROLE=$SCRIPT_ROLE FLEET_RUN=$RUN \
      FLEET_SCRIPT=$name FLEET_RESULTS=$results FLEET_PROGRESS="$WORK/progress" \
      timeout -k 5 "$timeout" "$@" </dev/null >"$dir/stdout" 2>"$dir/stderr"
    exit $?
  ) 2>/dev/null
  code=$?
  runtime=$(($(now_ms) - started))
  if [ $code = 0 ]; then
    status=passed
  elif { [ $code = 124 ] || [ $code = 143 ] || [ $code = 137 ]; } && [ $runtime -ge $((timeout * 1000 - 1000)) ]; then
    status=timed_out
  else
    status=failed
  fi
  for stream in stdout stderr; do
    if [ "$(wc -c < "$dir/$stream")" -gt $MAX_OUTPUT ]; then
      log "script $name: $stream is over $MAX_OUTPUT bytes; sending its end"
      tail -c $MAX_OUTPUT "$dir/$stream" > "$dir/$stream.tail" && mv "$dir/$stream.tail" "$dir/$stream"
    fi
  done
  {
    printf '{"run":"%s","name":"%s","kind":"%s","status":"%s","exit_code":%d,"runtime_ms":%d' \
      "$RUN" "$name" "$kind" "$status" "$code" "$runtime"
    printf ',"stdout_b64":"'; b64 < "$dir/stdout"
    printf '","stderr_b64":"'; b64 < "$dir/stderr"
    printf '"'
  } > "$dir/result.json"
  without=""
  if [ -s "$results" ]; then
    if [ "$(wc -c < "$results")" -le $MAX_RESULTS ]; then
      without="$dir/result-without-results.json"
      { cat "$dir/result.json"; printf '}'; } > "$without"
      { printf ',"results_b64":"'; b64 < "$results"; printf '"'; } >> "$dir/result.json"
    else
      log "script $name: its results file is over $MAX_RESULTS bytes; not sent"
    fi
  fi
  printf '}' >> "$dir/result.json"
  log "script $name: $status (exit $code, ${runtime} ms)"
  [ "$status" = passed ] || STATUS=1
  post_result "$dir/result.json" "$name" "$without"
done
exec 3<&-

# --- 4. signal and after ------------------------------------------------------------------------
if [ -n "$STOPPED" ]; then
  log "the controller said stop: $STOPPED"
  STATUS=1
  finish "$AFTER"
fi
echo signalling > "$WORK/stage"
if [ -n "$BROKEN" ]; then
  log "$BROKEN"
  STATUS=1
  printf '{"run":"%s","result":"failed","reason":"%s"}' "$RUN" "$(json_escape "$BROKEN")" > "$WORK/signal.json"
else
  printf '{"run":"%s","result":"ok"}' "$RUN" > "$WORK/signal.json"
fi
api "$WORK/signalled" POST "$(machine_path signal)" "$WORK/signal.json"
case $? in
  0)
    answer=$(value_of after "$WORK/signalled")
    case "$answer" in poweroff|reboot|wait|exit) AFTER=$answer ;; esac
    log "signalled $(sed -n 's/.*"result":"\([a-z]*\)".*/\1/p' "$WORK/signal.json"): after $AFTER"
    ;;
  *)
    STATUS=1
    log "signal: $(http_problem "$WORK/signalled")"
    ;;
esac
finish "$AFTER"
