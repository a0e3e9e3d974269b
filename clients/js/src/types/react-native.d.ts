// The few React Native APIs herald-realtime/react-native uses, declared here so the
// SDK type-checks without the react-native package. Apps get RN's own types.
declare module 'react-native' {
  import type { ComponentType, ReactNode } from 'react'
  interface BaseProps {
    style?: unknown
    testID?: string
    children?: ReactNode
    accessibilityLabel?: string
  }
  export const View: ComponentType<BaseProps>
  export const Text: ComponentType<BaseProps & { numberOfLines?: number }>
  export const ScrollView: ComponentType<BaseProps>
  export const TextInput: ComponentType<
    BaseProps & {
      value?: string
      placeholder?: string
      autoCapitalize?: 'none' | 'sentences' | 'words' | 'characters'
      onChangeText?: (text: string) => void
      onSubmitEditing?: () => void
    }
  >
  export const Pressable: ComponentType<BaseProps & { onPress?: () => void; disabled?: boolean }>
  export const StyleSheet: { create<T extends Record<string, object>>(styles: T): T }
  export const AppState: {
    currentState: string | null
    addEventListener(type: 'change', listener: (state: string) => void): { remove(): void }
  }
}
