module slimllm/cloudflared-sidecar

go 1.19
