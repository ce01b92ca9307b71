"""The runner side: what runs on a GitHub runner or Docker host around the containers.

`stack` starts, watches and stops a stack (through `docker compose` and the docker SDK), `handoff`
passes a stack to a successor run, `tunnel` finds a quick tunnel's URL, `images` builds the images
(through the one build definition, docker-bake.hcl).
"""
