# shellcheck shell=bash
# Helpers shared by the launchers (sourced, not run): messages, quoting for printed commands,
# dry-run tracing and flag checks. The sourcing script sets PROG and DRY_RUN.

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# One word, quoted for a POSIX shell only when it needs it (readable and copy-pasteable).
quote() {
  local s=$1 sq="'\\''"
  case $s in
    '' | *[!A-Za-z0-9_@%+=:,./-]*) printf "'%s'" "${s//\'/$sq}" ;;
    *) printf '%s' "$s" ;;
  esac
}
quote_words() {
  local out="" w
  for w in "$@"; do out="$out${out:+ }$(quote "$w")"; done
  printf '%s' "$out"
}
# Dry run: the commands go to stdout. Real run: they are traced to stderr as they run.
show_line() {
  if [ "$DRY_RUN" = 1 ]; then printf '+ %s\n' "$1"; else printf '+ %s\n' "$1" >&2; fi
}
show() { show_line "$(quote_words "$@")"; }
run() {
  show "$@"
  if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}

# need_value FLAG REMAINING_ARG_COUNT: the flag must be followed by a value.
need_value() { [ "$2" -ge 2 ] || die "$1 needs a value"; }
is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
