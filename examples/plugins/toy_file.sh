#!/bin/sh
# kv-rotator exec plugin (protocol 1): the toy file target of toy_file.py, in POSIX sh
# (plus sha256sum). The file (settings.path) has one line per user:
#
#     <user> <sha256-hex> [<sha256-hex> ...]
#
# Secrets come on stdin and stay in shell variables: they are only ever given to
# builtins (printf, case) or on a pipe (sha256sum's stdin), never as an argument of an
# external program (argv is public) or in a here-document (some shells write those to
# temporary files). The JSON reading below is deliberately simple: it handles requests
# whose strings have no escapes (kv-rotator's generated passwords never need any) and
# refuses the others. A lock directory serializes runs; a run killed on timeout may
# leave it behind (remove "<path>.lock.d" by hand). See docs/plugins.md.
set -u

reply() { printf '%s\n' "$1"; exit 0; }
fail() { reply "{\"protocol\":1,\"outcome\":\"error\",\"error\":{\"class\":\"$1\",\"message\":\"$2\"}}"; }

req=$(cat)
case "$req" in *\\*) fail permanent "this example reads no escaped JSON strings" ;; esac

# The value of string field $1 in JSON text $2 (first level only; see above).
str() { printf '%s' "$2" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
# The admin object's inside, then the request without it (so names are not ambiguous).
admin=$(printf '%s' "$req" | sed -n 's/.*"admin":{\([^}]*\)}.*/\1/p')
top=$(printf '%s' "$req" | sed 's/"admin":{[^}]*}/"admin":null/; s/"settings":{[^}]*}/"settings":null/')
settings=$(printf '%s' "$req" | sed -n 's/.*"settings":{\([^}]*\)}.*/\1/p')

case "$req" in *'"protocol":1,'*) ;; *) fail permanent "this plugin speaks protocol 1" ;; esac
op=$(str operation "$top")
if [ "$op" = describe ]; then
  reply '{"protocol":1,"outcome":"described","strategies":["single-user","multi-password"],"password":{"min_length":12,"max_length":256}}'
fi

path=$(str path "$settings")
[ -n "$path" ] || fail permanent "settings.path is required"
[ -r "$path" ] || fail transient "cannot read the target file"
until mkdir "$path.lock.d" 2>/dev/null; do sleep 0.05 2>/dev/null || sleep 1; done
trap 'rmdir "$path.lock.d"' EXIT

hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
# The hashes on user $1's line, and whether it exists.
hashes_of() { while IFS= read -r line; do case "$line" in "$1 "*) printf '%s\n' "${line#"$1 "}"; return 0 ;; esac; done <"$path"; return 1; }
# Whether password $2 logs in as user $1.
works() {
  [ -n "$2" ] || return 1
  hs=$(hashes_of "$1") || return 1
  h=$(hash "$2")
  case " $hs " in *" $h "*) return 0 ;; esac
  return 1
}
# Rewrites user $1's line with hashes $2 (atomically: a new file renamed over the old).
rewrite() {
  tmp="$path.tmp.$$"
  while IFS= read -r line; do
    case "$line" in "$1 "*) printf '%s %s\n' "$1" "$2" ;; *) printf '%s\n' "$line" ;; esac
  done <"$path" >"$tmp" && mv "$tmp" "$path"
}

user=$(str username "$top")
case "$op" in
verify)
  if works "$user" "$(str password "$top")"; then reply '{"protocol":1,"outcome":"accepted"}'; fi
  reply '{"protocol":1,"outcome":"rejected"}'
  ;;
set)
  pending=$(str pending "$top")
  hashes_of "$user" >/dev/null || fail permanent "no such user in the file"
  case "$top" in *'"pending_is_new":true'*) ;; *)
    if works "$user" "$pending"; then reply '{"protocol":1,"outcome":"already-set","verified":true}'; fi ;;
  esac
  how=
  if works "$user" "$(str current "$top")"; then
    how=current
  else
    # One previous password a line, between the quotes of the JSON array.
    list=$(printf '%s' "$top" | sed -n 's/.*"previous":\[\([^]]*\)\].*/\1/p' | sed 's/","/"\
"/g; s/"//g')
    found=$(printf '%s\n' "$list" | while IFS= read -r p; do
      if works "$user" "$p"; then echo yes; break; fi
    done)
    if [ "$found" = yes ]; then
      how=previous
    elif [ -n "$admin" ]; then
      admin_user=$(str username "$admin")
      if [ "$admin_user" != "$user" ] && works "$admin_user" "$(str password "$admin")"; then how=admin; fi
    fi
  fi
  [ -n "$how" ] || fail permanent "no known login of the user works (current, previous, admin)"
  new=$(hash "$pending")
  case "$top" in
  *'"strategy":"multi-password"'*)
    old=$(hashes_of "$user")
    case " $old " in *" $new "*) new=$old ;; *) new="$old $new" ;; esac ;;
  esac
  rewrite "$user" "$new" || fail transient "cannot rewrite the target file"
  verified=false
  if works "$user" "$pending"; then verified=true; fi
  reply "{\"protocol\":1,\"outcome\":\"changed\",\"changed_with\":\"$how\",\"verified\":$verified}"
  ;;
retire)
  works "$user" "$(str keep "$top")" || fail permanent "the password to keep does not log in: nothing removed"
  kept=" $(hash "$(str keep "$top")") "
  list=$(printf '%s' "$top" | sed -n 's/.*"also_keep":\[\([^]]*\)\].*/\1/p' | sed 's/","/"\
"/g; s/"//g')
  kept="$kept$(printf '%s\n' "$list" | while IFS= read -r p; do [ -n "$p" ] && printf '%s ' "$(hash "$p")"; done)"
  new= removed=0
  for h in $(hashes_of "$user"); do
    case "$kept" in *" $h "*) new="${new:+$new }$h" ;; *) removed=$((removed + 1)) ;; esac
  done
  rewrite "$user" "$new" || fail transient "cannot rewrite the target file"
  reply "{\"protocol\":1,\"outcome\":\"retired\",\"removed\":$removed}"
  ;;
esac
fail permanent "unknown operation"
