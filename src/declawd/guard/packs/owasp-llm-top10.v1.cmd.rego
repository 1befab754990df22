# owasp-llm-top10@v1: the command side of LLM03 (supply chain), LLM06 (excessive agency)
# and LLM10 (unbounded consumption).
package declaw.platform.cmd

import data.declaw.packs.lib.cmd as lib

deny contains "owasp-llm-top10@v1 LLM03 cmd.pipe_to_shell: a download piped into a shell or interpreter runs unreviewed code" if lib.pipe_to_shell

deny contains "owasp-llm-top10@v1 LLM06 cmd.root_delete: recursive delete of the filesystem root" if lib.root_delete

deny contains "owasp-llm-top10@v1 LLM06 cmd.destructive_device: formatting or overwriting a block device, or stopping the machine" if lib.destructive_device

deny contains "owasp-llm-top10@v1 LLM10 cmd.fork_bomb: a fork bomb" if lib.fork_bomb
