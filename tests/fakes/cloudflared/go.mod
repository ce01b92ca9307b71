module slimllm.test/fake-cloudflared

go 1.19
