# bash completion for cmxctl                                      -*- shell-script -*-
# Installed as /usr/share/bash-completion/completions/cmxctl. Its subcommands and flags are checked
# against the real ones by cmd/cmxctl's tests.

_cmxctl() {
	local cur prev words cword
	_init_completion || return

	if ((cword == 1)); then
		COMPREPLY=($(compgen -W "demo keygen push serve seal sign version help" -- "$cur"))
		return
	fi

	case $prev in
	--password-file | --ca-file | --cert-file | --key-file | --configs | --sign-key | --key)
		[[ $prev == --configs ]] && _filedir -d || _filedir
		return
		;;
	--dialect)
		COMPREPLY=($(compgen -W "cmx3 cmp7" -- "$cur"))
		return
		;;
	--log-level)
		COMPREPLY=($(compgen -W "debug info warn error" -- "$cur"))
		return
		;;
	--broker | --app | --extension | --username | --token | --name | --id | --wait | --embedded | --share | --addr | -o | --version | --expires)
		return # a value of the operator's own
		;;
	esac

	local common="--broker --app --extension --dialect --username --password-file --ca-file --cert-file --key-file --log-level"
	local flags
	case ${words[1]} in
	demo) flags="--addr --exit" ;;
	keygen) flags="-o" ;;
	push) flags="--token --name --id --wait --raw --sign-key $common" ;;
	serve) flags="--configs --embedded --share --sign-key $common" ;;
	seal) flags="--to" ;;
	sign) flags="--key --token --name --version --expires --id" ;;
	*) return ;;
	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
	elif [[ ${words[1]} == push || ${words[1]} == sign || ${words[1]} == seal ]]; then
		_filedir
	fi
} &&
	complete -F _cmxctl cmxctl
