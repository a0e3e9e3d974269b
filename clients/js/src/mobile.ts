/**
 * MobileRealtimeService: RealtimeService that follows the app's lifecycle
 * (README, "React Native"). In the background it closes the socket after
 * `backgroundGrace` and stops polling, so a backgrounded app holds no
 * connection and burns no battery; back in the foreground it reconnects at
 * once and resumes every stream from its cursor. When connectivity returns
 * it retries at once instead of waiting out the backoff.
 *
 * React Native's `AppState` and `@react-native-community/netinfo` fit the two
 * small interfaces below; they are injected, so this file imports nothing from
 * React Native and runs under Node in tests.
 */
import { RealtimeService } from './service.js'
import type { RealtimeOptions } from './types.js'

/** The part of React Native's `AppState` used here. */
export interface AppStateLike {
  currentState?: string | null
  addEventListener(type: 'change', listener: (state: string) => void): { remove(): void }
}

/** The part of NetInfo used here: `addEventListener` returns the unsubscribe function. */
export interface NetworkLike {
  addEventListener(listener: (state: { isConnected: boolean | null }) => void): () => void
}

export interface MobileRealtimeOptions extends RealtimeOptions {
  /** Ms in the background before the socket is closed (default 30000). */
  backgroundGrace?: number
  /** React Native's `AppState` (or a stand-in). */
  appState?: AppStateLike
  /** NetInfo (or a stand-in) to retry as soon as connectivity returns. */
  network?: NetworkLike
}

export class MobileRealtimeService extends RealtimeService {
  private readonly backgroundGrace: number
  private graceTimer: ReturnType<typeof setTimeout> | null = null
  private suspended = false
  private offline = false
  private readonly cleanups: Array<() => void> = []

  constructor(private readonly mobileOptions: MobileRealtimeOptions) {
    super(mobileOptions)
    this.backgroundGrace = mobileOptions.backgroundGrace ?? 30_000
  }

  /** Connects, and listens to AppState and the network until `disconnect()`. */
  override connect(): void {
    if (this.cleanups.length === 0) {
      const { appState, network } = this.mobileOptions
      if (appState) {
        const sub = appState.addEventListener('change', (s) => this.onAppState(s))
        this.cleanups.push(() => sub.remove())
      }
      if (network) {
        this.cleanups.push(
          network.addEventListener((s) => {
            if (s.isConnected === false) this.offline = true
            else if (s.isConnected === true) this.onNetworkBack()
          }),
        )
      }
    }
    this.suspended = false
    super.connect()
    // Started while already in the background (e.g. woken by a push): the grace applies.
    if (this.mobileOptions.appState?.currentState === 'background') this.onAppState('background')
  }

  /** True while the app is backgrounded and the socket has been closed. */
  get isSuspended(): boolean {
    return this.suspended
  }

  /** Reacts to an AppState value: `active`, `background` or `inactive`. */
  onAppState(state: string): void {
    if (state === 'active') {
      this.clearGrace()
      if (this.suspended) {
        this.suspended = false
        this.resumeSession()
      }
    } else if (state === 'background') {
      if (this.suspended || this.graceTimer !== null || !this.active) return
      this.graceTimer = setTimeout(() => {
        this.graceTimer = null
        if (!this.active) return
        this.suspended = true
        this.pauseSession()
      }, this.backgroundGrace)
    }
  }

  /** Connectivity returned: try the socket now rather than after the backoff. */
  onNetworkBack(): void {
    const wasOffline = this.offline
    this.offline = false
    if (wasOffline && !this.suspended && this.active && this.state !== 'connected') this.reconnectNow()
  }

  /** Disconnects and removes the AppState and network listeners. */
  override disconnect(): void {
    this.clearGrace()
    this.suspended = false
    for (const c of this.cleanups.splice(0)) c()
    super.disconnect()
  }

  /** Same as `disconnect()`; kept for symmetry with React Native APIs. */
  destroy(): void {
    this.disconnect()
  }

  private clearGrace(): void {
    if (this.graceTimer !== null) clearTimeout(this.graceTimer)
    this.graceTimer = null
  }
}
