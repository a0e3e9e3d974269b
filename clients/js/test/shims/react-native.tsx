/**
 * A stand-in for `react-native` under Node tests (aliased in vitest.config.ts):
 * host components render as plain elements react-test-renderer can inspect,
 * and AppState is a controllable emitter.
 */
import { createElement, type ReactNode } from 'react'

type Props = Record<string, unknown> & { children?: ReactNode }
const host = (name: string) => {
  const C = (props: Props) => createElement(name, props, props.children)
  C.displayName = name
  return C
}

export const View = host('View')
export const Text = host('Text')
export const ScrollView = host('ScrollView')
export const TextInput = host('TextInput')
export const Pressable = host('Pressable')
export const StyleSheet = { create: <T,>(s: T): T => s }

const listeners = new Set<(s: string) => void>()
export const AppState = {
  currentState: 'active' as string | null,
  addEventListener(_type: 'change', fn: (s: string) => void) {
    listeners.add(fn)
    return { remove: () => listeners.delete(fn) }
  },
  /** Test-only: simulate a transition. */
  emit(state: string) {
    AppState.currentState = state
    for (const fn of [...listeners]) fn(state)
  },
  listenerCount: () => listeners.size,
}
