#!/bin/sh
# `coordinator ...` and `worker ...` start the services; anything else is the rewind CLI.
set -e
case "$1" in
  coordinator) shift; exec rewind-coordinator "$@" ;;
  worker) shift; exec rewind-worker "$@" ;;
  *) exec rewind "$@" ;;
esac
