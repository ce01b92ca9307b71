"""`python -m slimllm.inference`: the inference server alone, as the container runs it.

Importing only this command keeps the image free of the dependencies of the other subcommands.
"""

from slimllm.inference.server import serve

serve.main(prog_name="slimllm-inference")
