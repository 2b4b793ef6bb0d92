# bash completion for cmx-agent                                   -*- shell-script -*-
# Installed as /usr/share/bash-completion/completions/cmx-agent. Its subcommands and flags are
# checked against the real ones by cmd/cmx-agent's tests.

_cmx_agent() {
	local cur prev words cword
	_init_completion || return

	local commands="init run check status sync history watch bundle import identity version"
	if ((cword == 1)); then
		COMPREPLY=($(compgen -W "$commands help" -- "$cur"))
		return
	fi

	case $prev in
	--config | -o | --socket | --output | --ca-file)
		_filedir
		return
		;;
	--dialect)
		COMPREPLY=($(compgen -W "cmx3 cmp7" -- "$cur"))
		return
		;;
	--token | --server | --app-version)
		return # the gateway's own values
		;;
	--log-format)
		COMPREPLY=($(compgen -W "text json" -- "$cur"))
		return
		;;
	--log-level)
		COMPREPLY=($(compgen -W "debug info warn error" -- "$cur"))
		return
		;;
	--debounce | --journal-lines)
		return # a duration, a number
		;;
	esac

	local flags
	case ${words[1]} in
	init) flags="--config --token --server --app-version --dialect --output --ca-file --force" ;;
	run) flags="--config --log-format --log-level" ;;
	check) flags="--config --online" ;;
	sync) flags="--config --socket" ;;
	status) flags="--config --socket --json" ;;
	history) flags="--config --socket --json" ;;
	watch)
		# After PATH and "--" comes a command of its own.
		local i
		for ((i = 2; i < cword; i++)); do
			if [[ ${words[i]} == -- ]]; then
				_command_offset $((i + 1))
				return
			fi
		done
		flags="--debounce"
		;;
	bundle) flags="--config --socket -o --with-outputs --journal-lines" ;;
	import) flags="--config --socket" ;;
	identity) flags="--config" ;;
	*) return ;;
	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
	elif [[ ${words[1]} == watch || ${words[1]} == import ]]; then
		_filedir
	fi
} &&
	complete -F _cmx_agent cmx-agent
