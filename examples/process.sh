#!/bin/sh
# One job of the README's shell example: count the letters of its argument.
printf '%s has %s letters\n' "$1" "${#1}"
