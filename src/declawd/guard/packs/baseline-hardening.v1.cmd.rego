# baseline-hardening@v1: commands no agent task needs and every intrusion uses.
package declaw.platform.cmd

import data.declaw.packs.lib.cmd as lib

deny contains "baseline-hardening@v1 BH-1 cmd.pipe_to_shell: a download piped into a shell or interpreter runs unreviewed code" if lib.pipe_to_shell

deny contains "baseline-hardening@v1 BH-2 cmd.root_delete: recursive delete of the filesystem root" if lib.root_delete

deny contains "baseline-hardening@v1 BH-3 cmd.proc_environ: reading a process environment (/proc/*/environ) exposes its secrets" if lib.proc_environ

deny contains "baseline-hardening@v1 BH-4 cmd.reverse_shell: reverse or remote shell tooling" if lib.reverse_shell
