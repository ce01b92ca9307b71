module slimllm.test/fake-origin

go 1.19
