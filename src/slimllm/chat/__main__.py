"""`python -m slimllm.chat`: the chat interface alone, as the container runs it.

Importing only this command keeps the image free of the dependencies of the other subcommands.
"""

from slimllm.chat.server import chat_interface

chat_interface.main(prog_name="slimllm-chat")
