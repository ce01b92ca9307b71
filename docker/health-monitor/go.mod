module slimllm/health-monitor

go 1.19
