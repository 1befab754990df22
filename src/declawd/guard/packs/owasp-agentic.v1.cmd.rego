# owasp-agentic@v1: the command side of ASI02-ASI05.
package declaw.platform.cmd

import data.declaw.packs.lib.cmd as lib

deny contains "owasp-agentic@v1 ASI02 cmd.root_delete: recursive delete of the filesystem root" if lib.root_delete

deny contains "owasp-agentic@v1 ASI02 cmd.destructive_device: formatting or overwriting a block device, or stopping the machine" if lib.destructive_device

deny contains "owasp-agentic@v1 ASI03 cmd.credential_files: reading credential files (cloud, SSH, registry, kube, git)" if lib.credential_files

deny contains "owasp-agentic@v1 ASI03 cmd.proc_environ: reading a process environment (/proc/*/environ) exposes its secrets" if lib.proc_environ

deny contains "owasp-agentic@v1 ASI04 cmd.pipe_to_shell: a download piped into a shell or interpreter runs unreviewed code" if lib.pipe_to_shell

deny contains "owasp-agentic@v1 ASI05 cmd.reverse_shell: reverse or remote shell tooling" if lib.reverse_shell
