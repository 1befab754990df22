# Command predicates shared by the packs (no deny rules here: packs decide what blocks).
# Input (declaw.platform.cmd): input.action.command (argv[0] base name), input.action.args
# (argv[1..n]) for one simple command, and input.action.command_line, the whole line as
# submitted, when the caller has it (pipelines are only visible there).
package declaw.packs.lib.cmd

default command := ""

command := input.action.command if is_string(input.action.command)

default args := []

args := input.action.args if is_array(input.action.args)

words := array.concat([command], args)

default line := ""

line := input.action.command_line if is_string(input.action.command_line)

line := concat(" ", words) if not is_string(input.action.command_line)

shells := {"sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "fish", "busybox"}

# A download (curl, wget) whose output is piped into a shell or an interpreter.
pipe_to_shell if regex.match(
	`(^|[;&|("']\s*|\s-c\s+)(sudo\s+)?(\S*/)?(curl|wget)\s[^;&]*\|\s*(sudo\s+(-\S+\s+)*)?(env\s+)?(\S*/)?((ba|da|z|k|a|mk)?sh|python[0-9.]*|perl|ruby|node)(\s|$|[;&|)'"])`,
	line,
)

# The same through process substitution: bash <(curl ...), sh -c "$(wget -O- ...)".
pipe_to_shell if regex.match(
	`(^|[;&|(]\s*)(\S*/)?(ba|da|z|k|a|mk)?sh\s+(-\S+\s+)*["']?(<\(|\$\()\s*(curl|wget)\b`,
	line,
)

recursive_flag if {
	some a in args
	regex.match(`^-[a-zA-Z]*[rR][a-zA-Z]*$`, a)
}

recursive_flag if {
	some a in args
	a == "--recursive"
}

root_target if {
	some a in args
	regex.match(`^/+(\*|\.)?$`, a)
}

root_target if {
	some a in args
	a == "--no-preserve-root"
}

root_delete if {
	command == "rm"
	recursive_flag
	root_target
}

# Another process's (or our own) environment: where injected credentials live.
proc_environ if regex.match(`/proc/[^/\s]+/(task/[^/\s]+/)?environ\b`, line)

credential_files if regex.match(
	`(^|[\s/=<"'])(\.aws/credentials|\.ssh/id_[A-Za-z0-9_]+|\.docker/config\.json|\.kube/config|\.git-credentials|\.netrc)\b`,
	line,
)

reverse_shell if regex.match(`/dev/(tcp|udp)/`, line)

reverse_shell if {
	command in {"nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"}
	some a in args
	regex.match(`^(-[a-zA-Z]*[ec]|--exec|--sh-exec|--lua-exec)`, a)
}

reverse_shell if {
	command == "socat"
	some a in args
	regex.match(`(^|,)(exec|system):`, lower(a))
}

destructive_device if regex.match(`^mkfs(\.[a-z0-9]+)?$`, command)

destructive_device if {
	command == "dd"
	some a in args
	startswith(a, "of=/dev/")
	not a in {"of=/dev/null", "of=/dev/stdout", "of=/dev/stderr"}
}

destructive_device if command in {"shutdown", "reboot", "halt", "poweroff"}

# :(){ :|:& };:  and the same with any function name.
fork_bomb if regex.match(`([A-Za-z_:][A-Za-z0-9_:]*)\s*\(\)\s*\{\s*[A-Za-z_:][A-Za-z0-9_:]*\s*\|\s*[A-Za-z_:][A-Za-z0-9_:]*\s*&\s*\}\s*;`, line)
