# mkma preset console/30-tools.toml: a pager and an editor for login shells
export PAGER=less
export EDITOR=vim.tiny
