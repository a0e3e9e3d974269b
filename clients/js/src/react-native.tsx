/**
 * herald-realtime/react-native: MobileRealtimeService, the mobile `useRealtime`
 * (README, "React Native": `useRealtime(wsUrl, apiUrl, userIdOrOptions)`),
 * the shared hooks, and `RealtimeDemo`, the mobile twin of the /realtime-demo
 * page.
 */
import { type JSX, useCallback, useRef, useState } from 'react'
import { AppState, Pressable, ScrollView, StyleSheet, Text, TextInput, View } from 'react-native'
import { MobileRealtimeService, type MobileRealtimeOptions, type NetworkLike } from './mobile.js'
import { useChannel, useConnectionState, useIsReceiving, useNotifications, useOverride, useServiceLifecycle } from './hooks-core.js'
import type { ConnectionState, MessageMeta, NotificationMeta } from './types.js'

export { MobileRealtimeService, type MobileRealtimeOptions, type AppStateLike, type NetworkLike } from './mobile.js'
export {
  useChannel,
  useVenueUpdates,
  useVibeChecks,
  usePromotions,
  useNotifications,
  useConnectionState,
  useIsReceiving,
  usePresence,
  useUnreadNotifications,
  applyPresenceEvent,
  type AnyService,
  type PresenceService,
  type UnreadService,
  type UnreadNotifications,
} from './hooks-core.js'
export type * from './types.js'

/** Options for the mobile `useRealtime`: everything but `url` and `apiUrl`. */
export type UseMobileRealtimeOptions = Omit<MobileRealtimeOptions, 'url' | 'apiUrl'>

export interface UseMobileRealtimeResult {
  service: MobileRealtimeService
  isConnected: boolean
  state: ConnectionState
  /** Updates are arriving: connected, or polling with answered polls (false while every poll fails). */
  isReceiving: boolean
}

/**
 * `@react-native-community/netinfo` when the app has it installed (it is an
 * optional peer dependency), else undefined. A literal `require` inside
 * try/catch is what Metro treats as an optional dependency: an app without
 * the package still bundles. Outside Metro (ESM under Node) `require` is
 * absent and this answers undefined.
 */
function optionalNetInfo(): NetworkLike | undefined {
  try {
    // @ts-ignore -- `require` exists under Metro (CommonJS at runtime), not in the ESM build's types.
    const mod = require('@react-native-community/netinfo') as { default?: unknown } | undefined
    const netInfo = (mod?.default ?? mod) as Partial<NetworkLike> | undefined
    return typeof netInfo?.addEventListener === 'function' ? (netInfo as NetworkLike) : undefined
  } catch {
    return undefined
  }
}

/**
 * Creates a MobileRealtimeService wired to React Native's AppState (unless
 * `appState` is given) and, when `@react-native-community/netinfo` is
 * installed, to network changes (unless `network` is given), connects it
 * while mounted, and re-renders on state changes. A bare string is the
 * dev-mode `user`.
 */
export function useRealtime(
  wsUrl: string,
  apiUrl?: string | null,
  userIdOrOptions?: string | UseMobileRealtimeOptions | null,
): UseMobileRealtimeResult {
  const options: UseMobileRealtimeOptions =
    typeof userIdOrOptions === 'string' ? { user: userIdOrOptions } : (userIdOrOptions ?? {})
  const latest = useRef(options)
  latest.current = options
  const key = JSON.stringify([wsUrl, apiUrl ?? '', options.user ?? '', options.token ?? '', Boolean(options.getToken)])
  const override = useOverride<MobileRealtimeService>()
  const service = useServiceLifecycle(override ? 'override' : key, () => {
    if (override) return override
    const o: MobileRealtimeOptions = { appState: AppState, ...options, url: wsUrl }
    if (!('network' in options)) {
      const netInfo = optionalNetInfo()
      if (netInfo) o.network = netInfo
    }
    if (apiUrl) o.apiUrl = apiUrl
    if (options.getToken) o.getToken = () => latest.current.getToken?.()
    return new MobileRealtimeService(o)
  })
  const state = useConnectionState(service)
  const isReceiving = useIsReceiving(service)
  return { service, isConnected: state === 'connected', state, isReceiving }
}

export interface RealtimeDemoProps {
  /** The `ws://host/ws` URL. */
  url: string
  apiUrl?: string
  /** Dev mode: receive this user's notifications without a token. */
  user?: string
  token?: string
  getToken?: MobileRealtimeOptions['getToken']
  /** Channels subscribed at start (more can be added in the UI). */
  channels?: string[]
  /** Extra service options (webSocket, delays, appState, network…). */
  options?: UseMobileRealtimeOptions
  /** How many messages and notifications to keep on screen (default 50). */
  maxItems?: number
}

interface Row {
  key: string
  text: string
}

/** One subscribed channel; renders nothing, feeds rows to the list. */
function ChannelFeed(props: {
  service: MobileRealtimeService
  channel: string
  onMessage: (data: unknown, meta: MessageMeta) => void
}): null {
  useChannel(props.service, props.channel, props.onMessage)
  return null
}

/** The mobile demo: connection state, live channel messages and notifications. */
export function RealtimeDemo(props: RealtimeDemoProps): JSX.Element {
  const max = props.maxItems ?? 50
  const opts: UseMobileRealtimeOptions = { ...props.options }
  if (props.user) opts.user = props.user
  if (props.token) opts.token = props.token
  if (props.getToken) opts.getToken = props.getToken
  const { service, state } = useRealtime(props.url, props.apiUrl, opts)
  const [channels, setChannels] = useState<string[]>(props.channels ?? [])
  const [draft, setDraft] = useState('')
  const [messages, setMessages] = useState<Row[]>([])
  const [notifications, setNotifications] = useState<Row[]>([])

  const onMessage = useCallback(
    (data: unknown, meta: MessageMeta) =>
      setMessages((rows) =>
        [{ key: `${meta.channel}@${meta.cursor}`, text: `${meta.channel} #${meta.offset} ${JSON.stringify(data)}` }, ...rows].slice(0, max),
      ),
    [max],
  )
  useNotifications(service, (data: unknown, meta: NotificationMeta) =>
    setNotifications((rows) => [{ key: meta.cursor, text: `#${meta.offset} ${JSON.stringify(data)}` }, ...rows].slice(0, max)),
  )
  const add = () => {
    const name = draft.trim()
    if (/^[A-Za-z0-9_\-.:@]{1,200}$/.test(name) && !channels.includes(name)) setChannels([...channels, name])
    setDraft('')
  }

  return (
    <View style={styles.root} testID="herald-demo">
      <View style={styles.row}>
        <Text testID="herald-state" style={styles.state}>
          {`State: ${state}`}
        </Text>
        {state === 'polling' ? (
          <Text testID="herald-polling" style={styles.badge}>
            polling
          </Text>
        ) : null}
      </View>
      <View style={styles.row}>
        <TextInput
          testID="herald-channel-input"
          style={styles.input}
          value={draft}
          placeholder="channel, e.g. venue:42"
          autoCapitalize="none"
          onChangeText={setDraft}
          onSubmitEditing={add}
        />
        <Pressable testID="herald-subscribe" onPress={add} style={styles.button}>
          <Text>Subscribe</Text>
        </Pressable>
      </View>
      {channels.map((c) => (
        <View key={c} style={styles.row}>
          <ChannelFeed service={service} channel={c} onMessage={onMessage} />
          <Text testID="herald-channel">{c}</Text>
          <Pressable testID={`herald-unsubscribe-${c}`} onPress={() => setChannels(channels.filter((x) => x !== c))}>
            <Text>×</Text>
          </Pressable>
        </View>
      ))}
      <Text style={styles.heading}>Messages</Text>
      <ScrollView style={styles.list}>
        {messages.map((m) => (
          <Text key={m.key} testID="herald-message" numberOfLines={3}>
            {m.text}
          </Text>
        ))}
      </ScrollView>
      <Text style={styles.heading}>Notifications</Text>
      <ScrollView style={styles.list}>
        {notifications.map((n) => (
          <Text key={n.key} testID="herald-notification" numberOfLines={3}>
            {n.text}
          </Text>
        ))}
      </ScrollView>
    </View>
  )
}

const styles = StyleSheet.create({
  root: { flex: 1, padding: 12, gap: 8 },
  row: { flexDirection: 'row', alignItems: 'center', gap: 8 },
  state: { fontWeight: '600' },
  badge: { backgroundColor: '#f59e0b', color: '#111', paddingHorizontal: 6, borderRadius: 4 },
  input: { flex: 1, borderWidth: 1, borderColor: '#ccc', padding: 6, borderRadius: 4 },
  button: { padding: 6, backgroundColor: '#e5e7eb', borderRadius: 4 },
  heading: { fontWeight: '600', marginTop: 8 },
  list: { maxHeight: 240 },
})
