# Prints what zsh completes for a command line, one match a line: zsh zsh-capture.zsh FPATH_DIR "mkma build --"
# An interactive zsh in a pseudo-terminal (zpty) gets the line and a TAB; compadd is wrapped to
# print the matches between two NUL lines. After zsh-capture-completion by Valodim (MIT).
zmodload zsh/zpty
zpty z zsh -f -i
local line
setopt rcquotes
local dir=$1; shift
() {
  zpty -w z source $1
  repeat 4; do
    zpty -r z line
    [[ $line == ok* ]] && return
  done
  echo 'error initializing.' >&2
  exit 2
} =( <<< "
PROMPT=
fpath=($dir \$fpath)
autoload -U compinit
compinit -u -d $dir/.zcompdump
"'
bindkey ''^M'' undefined
bindkey ''^J'' undefined
bindkey ''^I'' complete-word
null-line () { echo -E - $''\0'' }
compprefuncs=( null-line )
comppostfuncs=( null-line exit )
zstyle '':completion:*'' list-grouped false
zstyle '':completion:*'' insert-tab false
zstyle '':completion:*'' list-separator ''''
compadd () {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
    builtin compadd "$@"
    return $?
  fi
  typeset -a __hits
  builtin compadd -A __hits "$@"
  [[ -n $__hits ]] || return
  local h
  for h in $__hits; do echo -E - $IPREFIX$h; done
}
echo ok')
zpty -w z "$*"$'\t'
integer tog=0
while zpty -r z; do :; done | while IFS= read -r line; do
  if [[ $line == *$'\0\r' ]]; then
    (( tog++ )) && return 0 || continue
  fi
  (( tog )) && echo -E - $line
done
return 2
